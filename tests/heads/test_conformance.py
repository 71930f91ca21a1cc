"""Every head, tile level and slide level, against its own declaration (mito.heads.params), in the spirit of
scikit-learn's parametrize_with_checks: the declaration lists every constructor option, every value it refuses is a
one-line HeadError naming the head, the option and the allowed values, and each head fits, saves and loads back to
the same probabilities on real features (the legacy store: 30 AMi-Br crops through efficientnet_lite0).

Every test walks the one registry (mito.heads.model, keyed by (level, name)): a new head registered with
``register(level, name)`` is picked up here with no change to this file (tests/heads/example_head.py shows one)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from mito.heads import Model, head_class, make_head
from mito.heads import model as registry
from mito.heads.base import HeadError
from mito.heads.mil import MIL_PARAMS
from mito.heads.params import balance_mode
from tests.heads import example_head  # noqa: F401  (registers ("tile", "nearest-centroid"): a head added by one module)

STORE = Path(__file__).resolve().parents[1] / "assets" / "legacy" / "store.zarr"
KEY = "efficientnet_lite0:z1:rgb"
QUICK = {
    ("tile", "mlp"): {"epochs": 5, "hidden": 16},
    ("tile", "linear"): {"epochs": 5},
    ("tile", "lightgbm"): {"n_estimators": 20},
    **{("slide", n): {"epochs": 3, "hidden": 8, "attention": 4} for n in ("mean-linear", "mean-mlp", "abmil")},
}
NEEDS = {("tile", "text-linear"): {"text_embeddings": "text.npz"}}  # options a head cannot be built without (validation only)
FIT_SKIPS = {
    ("tile", "text-linear"): "needs the class text embeddings of a vision-language backbone (tests/heads/test_zeroshot.py fits it)"
}
# every registered tile and slide (level, name): built-ins, optional ones and any added (example_head); image-level
# models (fine-tuned backbones, registered by mito.bench.finetune) train on images: tests/bench/test_finetune.py
KEYS = tuple(k for k in registry.keys() if k[0] in ("tile", "slide"))


def _ids(key: tuple[str, str]) -> str:
    return ":".join(key)


def _invalid_cases() -> list[tuple[tuple[str, str], str, object]]:
    return [(k, opt, v) for k in KEYS for opt, p in registry.lookup(*k).param_spec.items() for v in p.invalid_values()]


def test_the_registry_covers_both_levels_and_the_example() -> None:
    assert {"mlp", "linear", "logreg", "knn", "lightgbm", "text-linear", "nearest-centroid"} <= set(registry.names("tile"))
    assert {"mean-linear", "mean-mlp", "abmil"} <= set(registry.names("slide"))
    assert ("tile", "nearest-centroid") in KEYS and all(registry.lookup(*k).level == k[0] for k in KEYS)


@pytest.mark.parametrize("key", KEYS, ids=_ids)
def test_every_model_declares_every_option(key: tuple[str, str]) -> None:
    model = registry.make(*key, **NEEDS.get(key, {}))  # the defaults are allowed by the declaration
    assert set(type(model).param_spec) == set(model.get_params())
    if key[0] == "tile":
        cls = head_class(key[1])
        assert set(cls.param_spec) == set(inspect.signature(cls.__init__).parameters) - {"self"}


def _check_message(e: HeadError, name: str, key: str) -> None:
    msg = str(e)
    assert "\n" not in msg and name in msg and key in msg, msg


@pytest.mark.parametrize(("key", "opt", "value"), _invalid_cases(), ids=lambda v: repr(v)[:20])
def test_every_model_refuses_what_its_declaration_refuses(key: tuple[str, str], opt: str, value: object) -> None:
    with pytest.raises(HeadError) as e:
        registry.make(*key, **{**NEEDS.get(key, {}), opt: value})
    _check_message(e.value, key[1], opt)
    if opt != "text_embeddings" or value not in (None, ""):  # a missing file gets its own, longer hint
        assert registry.lookup(*key).param_spec[opt].allowed() in str(e.value)


def test_an_unknown_option_names_the_head_and_what_it_takes() -> None:
    with pytest.raises(HeadError, match=r"head 'knn' has no option hidden \(it takes: .*n_neighbors"):
        make_head("knn", hidden=3)
    with pytest.raises(HeadError, match=r"unknown slide-level head 'nope'; choose one of mean-linear"):
        registry.make("slide", "nope")


@pytest.mark.parametrize("key", [k for k in KEYS if "balance" in registry.lookup(*k).param_spec], ids=_ids)
def test_balance_takes_one_meaning_and_its_old_spellings(key: tuple[str, str]) -> None:
    for old, new in ((True, "weights"), (False, "none")):
        assert registry.make(*key, **NEEDS.get(key, {}), balance=old).balance is old and balance_mode(old) == new
        registry.make(*key, **NEEDS.get(key, {}), balance=new)


@pytest.fixture(scope="module")
def real() -> tuple[np.ndarray, np.ndarray]:
    from mito.store import open_store

    with open_store(STORE) as s:
        return s.read([KEY]).astype(np.float32), s.tiles["mitosis"].astype(str).to_numpy()


def _fit_tile(model: object, real: tuple[np.ndarray, np.ndarray]) -> tuple[object, object]:
    X, y = real
    return model.fit(X[:20], y[:20], eval_set=(X[20:], y[20:])), X  # type: ignore[attr-defined]


def _fit_slide(model: object, store: object) -> tuple[object, object]:
    from mito.heads.bags import BagReader, BagSet, make_bags

    bags = make_bags(store.tiles, "dataset", "slide", min_per_class=1)  # type: ignore[attr-defined]
    data = BagSet(BagReader(store, [KEY]), bags)
    order = np.arange(len(bags))
    return model.fit(data.take(order[::2]), eval_set=data.take(order[1::2])), data  # type: ignore[attr-defined]


@pytest.mark.parametrize("key", KEYS, ids=_ids)
def test_every_model_fits_saves_and_loads_the_same(key: tuple[str, str], real: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    """The one contract (mito.heads.model.Model): fit returns the fitted model, predict_proba is one row per input and
    one column per class, save + the class's load give back the same options and the same probabilities."""
    from mito.store import open_store

    if key in FIT_SKIPS:
        pytest.skip(FIT_SKIPS[key])
    with open_store(STORE) as s:
        model = registry.make(*key, **QUICK.get(key, {}))
        fitted, X = _fit_tile(model, real) if key[0] == "tile" else _fit_slide(model, s)
        assert fitted is model and isinstance(model, Model) and model.level == key[0] and model.name == key[1]
        want = model.predict_proba(X)
        assert want.shape == (len(X), len(model.classes_)) and np.allclose(want.sum(1), 1)
        model.save(tmp_path / "m")
        back = type(model).load(tmp_path / "m")
        assert type(back) is type(model) and back.get_params() == model.get_params()
        np.testing.assert_array_equal(back.predict_proba(X), want)
        if key[0] == "slide":  # and the same tile weights (attention for abmil)
            for a, b in zip(model.predict_bags(X)[2], back.predict_bags(X)[2]):
                np.testing.assert_array_equal(a, b)


def test_cli_param_help_comes_from_the_declaration() -> None:
    """fit-head -p help prints one line per declared option of --head (tile or slide level), with its allowed values."""
    from typer.testing import CliRunner

    from mito.cli import app

    runner = CliRunner()
    for args, spec in ((["--head", "knn"], head_class("knn").param_spec), (["--level", "slide", "--head", "abmil"], MIL_PARAMS)):
        r = runner.invoke(app, ["fit-head", "--store", "unused.zarr", "--out", "unused", "-p", "help", *args])
        assert r.exit_code == 0, r.output
        lines = r.output.strip().splitlines()
        assert [ln.split(":")[0] for ln in lines] == list(spec)
        for ln, p in zip(lines, spec.values()):
            assert p.allowed() in ln
    r = runner.invoke(app, ["fit-head", "--store", "unused.zarr", "--out", "unused", "-p", "help", "--head", "nope"])
    assert r.exit_code == 2 and "unknown head 'nope'" in r.output


@pytest.mark.parametrize("name", ["mlp", "logreg", "ensemble", "slide-abmil"])
def test_model_directories_keep_the_contract(name: str, tmp_path: Path) -> None:
    """Model directories (tile, ensemble, slide; written before this change) load as Models, save back to a folder that
    loads to the same probabilities, and re-fit through the contract (tile: raw store features, pipeline included)."""
    from mito.app import load_artifact
    from mito.heads.bags import BagReader, BagSet, make_bags
    from mito.store import open_store

    model = load_artifact(STORE.parent / "models" / name)
    assert isinstance(model, Model) and model.level == ("slide" if name.startswith("slide") else "tile")
    with open_store(STORE) as s:
        if model.level == "slide":
            X: object = BagSet(BagReader(s, model.config["features"]), make_bags(s.tiles, None, model.config["bag_column"]))
        else:
            X = s.read(model.config["features"]).astype(np.float32)
        want = model.predict_proba(X)
        model.save(tmp_path / "m")
        back = load_artifact(tmp_path / "m")
        assert type(back) is type(model)
        np.testing.assert_array_equal(back.predict_proba(X), want)
        if model.level == "tile":
            y = s.tiles["mitosis"].astype(str).to_numpy()
            refit = back.fit(X[:20], y[:20], eval_set=(X[20:], y[20:]))
            assert refit is back and refit.predict_proba(X).shape == want.shape
