#!/usr/bin/env bash
# Run HERE (a machine with pip access), in the repo root: fetch the wheels the GPU machine lacks into the
# ignored .whl/ folder, for `device run` with carry [".whl"] (see benchmarks/gpu_session.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .gitignore || echo '/.whl/' >> .gitignore
mkdir -p .whl
plat=()
for n in 2_28 2_27 2_17 2_5; do plat+=(--platform "manylinux_${n}_x86_64"); done
plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# the GPU image has torch, timm, typer, rich, h5py, pandas, fsspec, safetensors; not zarr or pydantic
for req in zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
           pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl "$req"
done
du -sh .whl
