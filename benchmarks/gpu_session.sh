#!/usr/bin/env bash
# Run ON THE GPU MACHINE in one `device run` call (carry [".whl"]), writing under $OUT:
#   bash benchmarks/gpu_session.sh
# Every measurement issue 6 asks for, in one batch: extract_speed for the default CNN and the ViT-L,
# ViT-H (Virchow2 shape) and ViT-g shapes, eager and compiled, plus nvidia-smi. One JSON line per run in
# $OUT/extract_speed.jsonl, stderr in $OUT/log.txt. ../shared does not travel: the crops come from the
# 300-crop sample bundled in the package, cycled through symlinks up to N tiles.
# The second of REPEAT=2 rounds finds torch.compile's on-disk cache warm; the JSON keeps the best round.
# A call may run 10 minutes: split the architectures over calls, e.g. ARCHS="efficientnet_lite0 uni" then
# ARCHS="virchow2 h-optimus-0". DEVICE=cpu N=48 REPEAT=1 ARCHS=efficientnet_lite0 is a dry run here.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mito-gpu-out}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}; N=${N:-16384}; REPEAT=${REPEAT:-2}; ARCHS=${ARCHS:-"efficientnet_lite0 uni virchow2 h-optimus-0"}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 MITO_SHARED=$PWD/mito/data/sample
{ nvidia-smi || true; python3 -c "import torch, timm, zarr; print(torch.__version__, timm.__version__, zarr.__version__)"; } >> "$OUT/log.txt" 2>&1
for arch in $ARCHS; do
  for compile in "" "--compile"; do
    rw=$([ "$arch" = efficientnet_lite0 ] && echo "" || echo "--random-weights")
    echo "== $arch $compile" >> "$OUT/log.txt"
    timeout 900 python3 benchmarks/extract_speed.py --device "$DEVICE" --arch "$arch" $rw $compile --n "$N" --repeat "$REPEAT" \
      --source "$MITO_SHARED/amibr" >> "$OUT/extract_speed.jsonl" 2>> "$OUT/log.txt" || echo "failed: $arch $compile" >> "$OUT/log.txt"
  done
done
cat "$OUT/extract_speed.jsonl"
