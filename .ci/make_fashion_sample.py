"""Build `miniai/data/fashion_sample.npz`, the real Fashion-MNIST sample miniai falls back to when offline.

Source: the four official files, from a folder that holds them (default: the Debian/Ubuntu package
`dataset-fashion-mnist`, /usr/share/datasets/fashion-mnist/), each checked against the official MD5 of
its decompressed bytes, so a re-compressed copy works too. Usage:

    .venv/bin/python .ci/make_fashion_sample.py [folder]

From each class it takes 300 training images and 100 test (our `valid`) images at random with a fixed
seed (so every build gives the same file), shuffles each split, and stores images and labels as uint8
(3,000 + 1,000 images, about 1.7 MB compressed).
Fashion-MNIST: Han Xiao, Kashif Rasul, Roland Vollgraf (Zalando Research); licence MIT."""
import gzip, hashlib, sys
from pathlib import Path
import numpy as np
from miniai.fashion import FASHION_FILES, read_idx_pair

PER_CLASS = dict(train=300, valid=100)
SEED = 42

def balanced(x, y, per_class, rng):
    "`per_class` random items of each class of (x, y), shuffled together."
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])
    idx = rng.permutation(idx)
    return x[idx], y[idx]

def main(folder='/usr/share/datasets/fashion-mnist', dest=Path(__file__).parent.parent/'miniai'/'data'/'fashion_sample.npz'):
    folder, rng, arrays = Path(folder), np.random.default_rng(SEED), {}
    for name, (fname, _, _, raw_md5) in FASHION_FILES.items():
        got = hashlib.md5(gzip.open(folder/fname).read()).hexdigest()
        assert got == raw_md5, f'{folder/fname}: decompressed MD5 {got}, expected {raw_md5}'
    for split, n in PER_CLASS.items():
        x, y = read_idx_pair(folder/FASHION_FILES[f'{split}-images'][0], folder/FASHION_FILES[f'{split}-labels'][0])
        arrays[f'x_{split}'], arrays[f'y_{split}'] = balanced(x.numpy(), y.numpy().astype(np.uint8), n, rng)
    tmp = dest.with_suffix('.tmp.npz')
    np.savez_compressed(tmp, **arrays)
    tmp.replace(dest)
    print(f'wrote {dest} ({dest.stat().st_size:,} bytes):', {k: v.shape for k, v in arrays.items()})

if __name__ == '__main__': main(*sys.argv[1:])
