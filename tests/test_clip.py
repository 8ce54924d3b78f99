"Tests of miniai.clip: the contrastive loss against a per-element loop and PyTorch's cross-entropy, soft positives, the temperature's clamp, shapes and gradients of `CLIPModel`, the captions of `CaptionCB`, zero-shot on a toy, saving and loading."
import json, math
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays
from miniai.clip import (CLIPModel, CaptionCB, attribute_choice, class_prompts, clip_loss, load_clip, save_clip, similarity,
                         trained_clip, zero_shot_classify)
from miniai.text import (HELD_OUT, Tokenizer, attribute_words, caption_tokenizer, drop_held_out, mentions_held_out, tercile_codes,
                         tercile_thresholds, pixel_measures)

def clip_loss_loop(logits, keys=None):
    "The symmetric contrastive loss with soft targets, one element at a time in Python floats (float64)."
    n = len(logits)
    keys = list(range(n)) if keys is None else keys.tolist()
    l = logits.tolist()
    total = 0.
    for i in range(n):
        pos = [j for j in range(n) if keys[j] == keys[i]]
        row = math.log(sum(math.exp(l[i][k]) for k in range(n)))
        col = math.log(sum(math.exp(l[k][i]) for k in range(n)))
        total += sum(row - l[i][j] for j in pos) / len(pos) / 2 + sum(col - l[j][i] for j in pos) / len(pos) / 2
    return total / n

@st.composite
def logits_and_keys(draw, max_n=8):
    "Square float64 logits in [-30, 30] and integer keys with repeats (few distinct values)."
    n = draw(st.integers(1, max_n))
    logits = torch.from_numpy(draw(arrays('float64', (n, n), elements=st.floats(-30, 30, allow_nan=False))))
    keys = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    return logits, keys

@given(logits_and_keys())
def test_loss_matches_loop(case):
    logits, keys = case
    assert math.isclose(clip_loss(logits, keys).item(), clip_loss_loop(logits, keys), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(clip_loss(logits).item(), clip_loss_loop(logits), rel_tol=1e-9, abs_tol=1e-9)

@given(logits_and_keys())
def test_loss_matches_cross_entropy(case):
    logits, keys = case
    n = len(logits)
    hard = (F.cross_entropy(logits, torch.arange(n)) + F.cross_entropy(logits.T, torch.arange(n))) / 2
    torch.testing.assert_close(clip_loss(logits), hard)
    torch.testing.assert_close(clip_loss(logits, torch.arange(n) * 7), hard)   # distinct keys: one-hot targets
    t = (keys[:, None] == keys[None]).double(); t = t / t.sum(1, keepdim=True)
    torch.testing.assert_close(clip_loss(logits, keys), (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t)) / 2)

@given(logits_and_keys(), st.randoms(use_true_random=False))
def test_loss_is_permutation_invariant(case, rnd):
    "Reordering the pairs (rows and columns together, keys with them) does not change the loss."
    logits, keys = case
    p = torch.tensor(rnd.sample(range(len(logits)), len(logits)))
    torch.testing.assert_close(clip_loss(logits[p][:, p], keys[p]), clip_loss(logits, keys))

def test_soft_positives():
    "Two pairs with the same content, perfectly embedded: the soft loss is at rest, the one-hot loss still pushes them apart."
    emb = torch.eye(3)[[0, 0, 1, 2]]
    logits = (100. * emb @ emb.T).requires_grad_()
    clip_loss(logits, torch.tensor([5, 5, 1, 2])).backward()
    assert logits.grad.abs().max() < 1e-6
    logits.grad = None
    clip_loss(logits).backward()
    assert logits.grad.abs().max() > 0.1
    # the soft loss's floor is the targets' entropy: ln 2 for each of the 2 rows and 2 columns of the look-alikes, over 4
    assert math.isclose(clip_loss(logits.detach(), torch.tensor([5, 5, 1, 2])).item(), math.log(2) / 2, rel_tol=1e-5)

def test_loss_errors():
    with pytest.raises(ValueError, match='square'): clip_loss(torch.zeros(3, 4))
    with pytest.raises(ValueError, match='square'): clip_loss(torch.zeros(3))
    with pytest.raises(ValueError, match='one per image-caption pair'): clip_loss(torch.zeros(3, 3), torch.zeros(2))

@pytest.fixture(scope='module')
def tok(): return caption_tokenizer()

def small_model(tok, **kw):
    torch.manual_seed(0)
    return CLIPModel(len(tok), tok.max_len, d_emb=16, nfs=(4, 8), d_model=16, n_heads=2, n_layers=1, **kw)

def test_shapes_and_norms(tok):
    m = small_model(tok)
    ids, mask = tok(['a photo of a dark dress', 'a bag', 'an image of a small light sneaker'])
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    img, txt = m.encode_image(x), m.encode_text(ids, mask)
    assert img.shape == txt.shape == (3, 16)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(3)); torch.testing.assert_close(txt.norm(dim=1), torch.ones(3))
    logits = m(x, ids, mask)
    assert logits.shape == (3, 3)
    torch.testing.assert_close(logits, m.scale * img @ txt.T)
    assert math.isclose(m.scale.item(), 1 / 0.07, rel_tol=1e-5)

def test_padding_changes_nothing(tok):
    "Cutting the padding after the longest caption (as CaptionCB does) leaves the text embeddings unchanged."
    m = small_model(tok).eval()
    ids, mask = tok(['a bag', 'a photo of a dress'])
    L = int(mask.sum(1).max())
    torch.testing.assert_close(m.encode_text(ids[:, :L], mask[:, :L]), m.encode_text(ids, mask), atol=1e-6, rtol=1e-5)

def test_temperature_clamp(tok):
    m = small_model(tok)
    with torch.no_grad(): m.logit_scale.fill_(math.log(1e4))
    assert math.isclose(m.scale.item(), 100., rel_tol=1e-6)
    m.scale.backward()
    assert m.logit_scale.grad.item() == 0.
    with torch.no_grad(): m.logit_scale.fill_(math.log(50.))
    m.logit_scale.grad = None
    m.scale.backward()
    assert math.isclose(m.logit_scale.grad.item(), 50., rel_tol=1e-5)   # d exp(p)/dp = exp(p) below the clamp
    with pytest.raises(ValueError, match='1/temperature <= max_scale'): CLIPModel(len(tok), temperature=0.001)
    with pytest.raises(ValueError, match='0 < temperature'): CLIPModel(len(tok), temperature=-1.)

def test_gradients_reach_all_parameters(tok):
    m = small_model(tok).train()
    caps = ['a photo of a dark dress', 'a bag', 'an image of a small light sneaker', 'a photo of trousers']
    ids, mask = tok(caps)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    clip_loss(m(x, ids, mask), torch.tensor([0, 1, 2, 3])).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing

def test_model_input_errors(tok):
    m = small_model(tok)
    ids, mask = tok(['a bag', 'a coat'])
    with pytest.raises(ValueError, match='3 images but 2 captions'): m(torch.zeros(3, 1, 32, 32), ids, mask)
    with pytest.raises(ValueError, match=r'images must be \[n, 1, height, width\]'): m.encode_image(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match='token ids must be in'): m.encode_text(ids + 100, mask)

def fake_batch(n=64, seed=0):
    "Images in [-1, 1] (background -1) with garments of random brightness and size, and random labels."
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 1, 32, 32), -1.)
    for i in range(n):
        s = int(torch.randint(4, 14, (), generator=g))
        x[i, 0, 16 - s:16 + s, 16 - s:16 + s] = torch.rand((), generator=g) * 1.8 - 0.8
    return x, torch.randint(0, 10, (n,), generator=g)

def test_caption_cb(tok):
    x, y = fake_batch(200)
    thresholds = tercile_thresholds(pixel_measures((x + 1) / 2), y)
    cb = CaptionCB(tok, thresholds, generator=torch.Generator().manual_seed(0))
    caps, keys = cb.captions(x, y)
    assert len(caps) == len(keys) == 200
    assert not any(mentions_held_out(c) for _ in range(5) for c in cb.captions(x, y)[0])
    for k in keys.unique(): assert len(y[keys == k].unique()) == 1   # one key, one class
    # equal keys mean equal content: the same class and attribute words, whatever the template
    words = {'dark', 'light', 'small', 'large'}
    for k in keys.unique():
        contents = {frozenset(w for w in caps[i].split() if w in words) for i in (keys == k).nonzero().flatten().tolist()}
        assert len(contents) == 1, contents
    class Stub: pass
    learn = Stub(); learn.batch = (x, y)
    cb.before_batch(learn)
    images, ids, mask, keys2 = learn.batch
    assert images is x and ids.shape == mask.shape and ids.shape[1] == int(mask.sum(1).max()) and keys2.shape == (200,)
    assert (ids[:, 0] == tok.bos_id).all()

def test_caption_cb_hides_held_out_words(tok):
    "A dark dress is captioned without 'dark' (but keeps its other words); the captions vary from draw to draw."
    x, y = fake_batch(300, seed=1)
    y[:] = 3   # all dresses
    thresholds = tercile_thresholds(pixel_measures((x + 1) / 2), torch.arange(300) % 10)
    cb = CaptionCB(tok, thresholds, generator=torch.Generator().manual_seed(0))
    caps = [c for _ in range(3) for c in cb.captions(x, y)[0]]
    assert not any('dark' in c.split() for c in caps)
    assert any('light' in c.split() for c in caps)
    assert len(set(cb.captions(x[:1].expand(20, -1, -1, -1), y[:1].expand(20))[0])) > 1
    # without held-out pairs, 'dark' does appear
    cb_all = CaptionCB(tok, thresholds, held_out=(), generator=torch.Generator().manual_seed(0))
    assert any('dark' in c.split() for c in cb_all.captions(x, y)[0])

def test_caption_cb_omits_words(tok):
    "p_omit=0 names every attribute word of each image, p_omit=1 none; keys follow the words actually used."
    x, y = fake_batch(200, seed=2)
    thresholds = tercile_thresholds(pixel_measures((x + 1) / 2), y)
    words = {'dark', 'light', 'small', 'large'}
    codes = tercile_codes(pixel_measures((x + 1) / 2), y, thresholds)
    full = [set(drop_held_out(int(l), attribute_words(c))) for l, c in zip(y, codes.tolist())]
    caps0, _ = CaptionCB(tok, thresholds, generator=torch.Generator().manual_seed(0), p_omit=0.).captions(x, y)
    assert [set(c.split()) & words for c in caps0] == full
    caps1, keys1 = CaptionCB(tok, thresholds, generator=torch.Generator().manual_seed(0), p_omit=1.).captions(x, y)
    assert not any(set(c.split()) & words for c in caps1)
    assert len(keys1.unique()) == len(y.unique())   # with no words left, the content is the class alone

class ToyCLIP(nn.Module):
    "Identity encoders: an image is its own (normalised) embedding; a text is the one-hot of its first word."
    def __init__(self, d): super().__init__(); self.d = d; self.dummy = nn.Parameter(torch.zeros(1))
    def encode_image(self, images): return F.normalize(images.flatten(1), dim=-1)
    def encode_text(self, ids, mask): return F.one_hot(ids[:, 1] - 4, self.d).float()

@given(st.lists(st.integers(0, 4), min_size=1, max_size=12), st.permutations(range(5)))
def test_zero_shot_toy(classes, order):
    words = ['north', 'east', 'south', 'west', 'up']
    tk = Tokenizer(words)
    images = (torch.eye(5)[classes] + 0.1).view(len(classes), 1, 1, 5)   # off-axis a little: still closest to its own word
    prompts = [words[i] for i in order]
    pred = zero_shot_classify(ToyCLIP(5), tk, images, prompts)
    assert [prompts[p] for p in pred.tolist()] == [words[c] for c in classes]
    sims = similarity(ToyCLIP(5), tk, images, prompts, batch_size=2)
    assert sims.shape == (len(classes), 5)

def test_similarity_errors(tok):
    m = small_model(tok)
    with pytest.raises(ValueError, match='non-empty list'): similarity(m, tok, torch.zeros(2, 1, 32, 32), [])
    with pytest.raises(ValueError, match='non-empty list'): similarity(m, tok, torch.zeros(2, 1, 32, 32), 'a bag')
    with pytest.raises(ValueError, match='at most 14 fit'): similarity(m, tok, torch.zeros(2, 1, 32, 32), ['a ' * 20 + 'bag'])

def test_class_prompts():
    p = class_prompts()
    assert len(p) == 10 and p[0] == 'a photo of a t-shirt' and p[1] == 'a photo of trousers' and p[9] == 'a photo of an ankle boot'
    assert class_prompts(('small',))[8] == 'a photo of a small bag'
    assert class_prompts(template=1)[3] == 'a dress'
    with pytest.raises(ValueError, match='index into TEMPLATES'): class_prompts(template=-1)

def test_attribute_choice_toy():
    "A toy whose text embedding says 'light' for the word after 'a photo of a' and whose images are bright or dark picks by brightness."
    tk = caption_tokenizer()
    light_id, dark_id = tk.stoi['light'], tk.stoi['dark']
    class Toy(nn.Module):
        def __init__(self): super().__init__(); self.dummy = nn.Parameter(torch.zeros(1))
        def encode_image(self, x): b = x.mean((1, 2, 3)); return F.normalize(torch.stack([b, -b], 1), dim=1)
        def encode_text(self, ids, mask):
            light, dark = (ids == light_id).any(1).float(), (ids == dark_id).any(1).float()
            return torch.stack([light - dark, dark - light], 1)
    x = torch.cat([torch.full((3, 1, 4, 4), 0.5), torch.full((2, 1, 4, 4), -0.5)])
    pred = attribute_choice(Toy(), tk, x, torch.tensor([0, 3, 9, 1, 8]), 0)
    assert pred.tolist() == [1, 1, 1, -1, -1] and pred.dtype == torch.int8
    with pytest.raises(ValueError, match='measure must be 0'): attribute_choice(Toy(), tk, x, torch.zeros(5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match='5 images but 4 labels'): attribute_choice(Toy(), tk, x, torch.zeros(4, dtype=torch.long), 0)

def test_save_load_round_trip(tok, tmp_path):
    m = small_model(tok).eval()
    folder = save_clip(m, tok, tmp_path/'m', dict(epochs=3, losses=[1., 0.5]))
    loaded, tk, rec = load_clip(folder)
    assert tk.itos == tok.itos and tk.max_len == tok.max_len and rec['epochs'] == 3 and rec['losses'] == [1., 0.5]
    assert not loaded.training
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(similarity(loaded, tk, x, class_prompts()), similarity(m, tok, x, class_prompts()))
    torch.testing.assert_close(loaded.logit_scale, m.logit_scale)

def test_load_errors(tok, tmp_path):
    m = small_model(tok)
    folder = save_clip(m, tok, tmp_path/'m')
    with pytest.raises(FileNotFoundError, match='not a saved model'): load_clip(tmp_path/'other')
    config, weights = folder/'config.json', folder/'model.safetensors'
    text = config.read_text()
    config.write_text('{not json')
    with pytest.raises(ValueError, match='not valid JSON'): load_clip(folder)
    meta = json.loads(text); meta['record'] = {'epochs': 1}
    config.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match='lacks the vocabulary'): load_clip(folder)
    meta = json.loads(text); meta['record']['vocab'] = meta['record']['vocab'][:-3]
    config.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match='words of at most'): load_clip(folder)
    meta = json.loads(text); meta['record']['max_len'] = meta['record']['max_len'] + 4   # tampered max_len
    config.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match='words of at most'): load_clip(folder)
    config.write_text(text)
    weights.write_bytes(b'garbage')
    with pytest.raises(ValueError, match='SHA-256 differs'): load_clip(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match='model.safetensors is missing'): load_clip(folder)
    # weights from another architecture
    save_clip(CLIPModel(len(tok), d_emb=16, nfs=(4, 8), d_model=16, n_heads=2, n_layers=1), tok, folder)
    other = json.loads(config.read_text()); other['config']['d_emb'] = 32
    config.write_text(json.dumps(other))
    with pytest.raises(ValueError, match='different architecture'): load_clip(folder)

def test_trained_clip_loads_and_checks_vocab(tok, tmp_path, monkeypatch):
    "trained_clip loads a saved model from models_dir() without training, and refuses one saved with another vocabulary."
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path))
    from miniai.store import models_dir
    m = CLIPModel(len(tok), tok.max_len)
    settings = dict(epochs=7, batch_size=32, p_omit=0.5)
    save_clip(m, tok, models_dir()/'clip_fashion_e7_b32_omit0.5', settings)
    loaded, tk, rec = trained_clip(epochs=7, batch_size=32, verbose=False)
    assert rec['epochs'] == 7 and tk.itos == tok.itos and loaded.config == m.config
    save_clip(small_model(tok), tok, models_dir()/'clip_fashion_e9_b32_omit0.5', {**settings, 'epochs': 9})
    with pytest.raises(ValueError, match='d_emb is 16 there, not 128'): trained_clip(epochs=9, batch_size=32, verbose=False)
    swapped = tok.itos[:4] + [tok.itos[5], tok.itos[4]] + tok.itos[6:]   # two words' ids exchanged
    save_clip(m, Tokenizer(swapped[4:], tok.max_len), models_dir()/'clip_fashion_e8_b32_omit0.5', {**settings, 'epochs': 8})
    with pytest.raises(ValueError, match='vocab is .* there, not'): trained_clip(epochs=8, batch_size=32, verbose=False)

def test_trained_clip_trains_when_missing(tmp_path, monkeypatch):
    "With no saved model, trained_clip trains (here 2 steps on 64 images), saves, and loads the same model the next time."
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path))
    model, tk, rec = trained_clip(epochs=1, batch_size=32, n_train=64, verbose=False)
    assert rec['steps'] == 2 and rec['n_train'] == 64 and len(rec['losses']) == 2 and rec['vocab'] == tk.itos and rec['p_omit'] == 0.5
    assert (tmp_path/'models'/'clip_fashion_e1_b32_omit0.5_n64'/'model.safetensors').is_file()
    again, tk2, rec2 = trained_clip(epochs=1, batch_size=32, n_train=64, verbose=False)
    assert rec2 == rec
    for (n, p), q in zip(model.state_dict().items(), again.state_dict().values()): torch.testing.assert_close(p, q, msg=n)

def test_similarity_refuses_unknown_words(tok):
    "'a zebra' and 'a giraffe' used to score the same: both became <unk>."
    m = small_model(tok)
    with pytest.raises(ValueError, match="never trained on 'zebra'.*use the words of its captions"):
        similarity(m, tok, torch.zeros(2, 1, 32, 32), ['a dress', 'a zebra'])
