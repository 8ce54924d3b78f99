"Captions are made of vocabulary words and use the right articles, pixel measures match a direct count, terciles split each class into thirds (against NumPy's quantiles), held-out pairs never reach a training caption, and the tokenizer round-trips, pads, masks and marks unknown words; bad input fails clearly."
from importlib.resources import files
import numpy as np
import pytest, torch
from hypothesis import given, settings, strategies as st
from miniai.fashion import FASHION_CLASSES
from miniai.text import (CLASS_NOUNS, PLURAL_NOUNS, ATTRIBUTE_WORDS, TEMPLATES, ATTRIBUTE_TEMPLATES, HELD_OUT, SPECIAL_TOKENS, split_words,
                         all_captions, captions_for, pixel_measures, tercile_thresholds, tercile_codes, attribute_words, held_out_mask,
                         drop_held_out, mentions_held_out, omit_words, FashionCaptions, caption_vocab, Tokenizer, caption_tokenizer)

ATTR_SETS = [()] + [(w,) for pair in ATTRIBUTE_WORDS for w in pair] + [(a, b) for a in ATTRIBUTE_WORDS[1] for b in ATTRIBUTE_WORDS[0]]
TOK = caption_tokenizer()
VOCAB = caption_vocab()

@pytest.fixture(scope='module')
def sample():
    "The Fashion-MNIST sample bundled with miniai: 3,000 training images and labels."
    with np.load(files('miniai')/'data'/'fashion_sample.npz') as d: return torch.from_numpy(d['x_train']), torch.from_numpy(d['y_train']).long()

# words
@given(st.text(max_size=60))
def test_split_words_is_idempotent_and_lowercase(text):
    words = split_words(text)
    assert split_words(' '.join(words)) == words
    assert all(w == w.lower() and w.strip() == w and w for w in words)

def test_split_words_keeps_inner_hyphens_and_drops_punctuation():
    assert split_words("A T-Shirt/top, it's -- well-worn!") == ['a', 't-shirt', 'top', "it's", 'well-worn']
    assert split_words(' ?!/ - ') == []
    with pytest.raises(TypeError, match='expected a string'): split_words(3)

# captions
def test_every_caption_is_vocabulary_words_and_fits():
    for c in range(10):
        for attrs in ATTR_SETS:
            caps = all_captions(c, attrs)
            assert len(caps) == 3 * (len(TEMPLATES) + (len(ATTRIBUTE_TEMPLATES) if attrs else 0)) == len(set(caps))
            for cap in caps:
                words = split_words(cap)
                assert ' '.join(words) == cap and set(words) <= set(VOCAB) and len(words) + 2 <= TOK.max_len
                assert all(a in words for a in attrs) and any(f' {n} ' in f' {cap} ' for n in CLASS_NOUNS[c])

def test_articles_and_plurals():
    assert 'a photo of an ankle boot' in all_captions(9) and 'a photo of an overcoat' in all_captions(4)
    assert 'a photo of a large ankle boot' in all_captions(9, 'large')
    assert 'a photo of dark trousers' in all_captions(1, 'dark') and 'a picture of jeans that are small and light' in all_captions(1, ('light', 'small'))
    for cap in all_captions(1, ('dark', 'large')): assert ' a trousers' not in f' {cap}' and ' a pants' not in f' {cap}' and ' is ' not in cap
    assert not any(' a a' in f' {c} ' for c in all_captions(5, 'large'))   # no 'a an'/'a a' pile-ups

def test_attribute_order_does_not_matter():
    assert all_captions(3, ('dark', 'small')) == all_captions(3, ('small', 'dark'))
    assert all_captions(3, ('dark', 'small'))[0] == 'a photo of a small dark dress'

def test_captions_for_is_seeded_and_covers_the_list():
    draw = lambda seed: [captions_for(7, ('light',), torch.Generator().manual_seed(seed)) for _ in range(3)]
    assert draw(0) == draw(0)
    g = torch.Generator().manual_seed(1)
    assert {captions_for(7, 'light', g) for _ in range(600)} == set(all_captions(7, 'light'))

@pytest.mark.parametrize('args,err,msg', [((3, ('red',)), ValueError, "unknown attribute word 'red'"), ((3, ('dark', 'light')), ValueError, 'contradict'),
                                          ((10,), ValueError, 'out of range'), ((-1,), ValueError, 'out of range'), ((2.5,), TypeError, 'must be an integer')])
def test_caption_errors(args, err, msg):
    with pytest.raises(err, match=msg): all_captions(*args)
    with pytest.raises(err, match=msg): captions_for(*args)

# pixel measures and terciles
@settings(max_examples=50)
@given(st.integers(0, 2**31 - 1), st.integers(0, 6), st.integers(1, 8))
def test_pixel_measures_match_a_loop(seed, n, side):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, side, side), generator=g, dtype=torch.uint8) * (torch.rand(n, side, side, generator=g) < 0.5)
    got = pixel_measures(x, chunk=2)
    for im, (b, a) in zip(x, got.tolist()):
        ink = [v / 255 for v in im.flatten().tolist() if v > 0]
        assert a == len(ink) and abs(b - (sum(ink) / len(ink) if ink else 0.)) < 1e-5
    assert torch.allclose(pixel_measures(x.float() / 255), got, atol=1e-5)

def test_pixel_measures_of_32px_images_in_minus1_1(sample):
    x = sample[0][:50]
    x32 = torch.nn.functional.pad(x.float()[:, None] / 127.5 - 1, (2, 2, 2, 2), value=-1.)
    assert torch.allclose(pixel_measures((x32 + 1) / 2), pixel_measures(x), atol=1e-4)
    with pytest.raises(ValueError, match=r'pass \(x \+ 1\) / 2'): pixel_measures(x32)
    with pytest.raises(TypeError, match='uint8 or float'): pixel_measures(x.long())

@st.composite
def class_measures(draw):
    "Distinct float measures `[n, 2]` and labels with 3 to 40 images in each of 1 to 4 classes."
    counts = draw(st.lists(st.integers(3, 40), min_size=1, max_size=4))
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return torch.rand(len(labels), 2, generator=g, dtype=torch.float64) * 100, labels[torch.randperm(len(labels), generator=g)], len(counts)

@settings(max_examples=100)
@given(class_measures())
def test_terciles_match_numpy_and_split_into_thirds(case):
    m, labels, n_classes = case
    t = tercile_thresholds(m, labels, n_classes)
    codes = tercile_codes(m, labels, t)
    for c in range(n_classes):
        mc = m[labels == c]
        assert np.allclose(t[c].numpy(), np.quantile(mc.numpy(), [1/3, 2/3], axis=0).T)
        for v in (-1, 0, 1):   # distinct values: each third within one image of a third of the class
            assert ((codes[labels == c] == v).sum(0) - len(mc) / 3).abs().max() <= 1
    assert codes.dtype == torch.int8

def test_terciles_on_the_sample_are_thirds(sample):
    x, y = sample
    m = pixel_measures(x)
    codes = tercile_codes(m, y, tercile_thresholds(m, y))
    for c in range(10):
        shares = torch.stack([(codes[y == c] == v).float().mean(0) for v in (-1, 0, 1)])
        assert (shares - 1/3).abs().max() < 0.05, (c, shares)

@pytest.mark.parametrize('m,labels,msg', [(torch.zeros(5, 2), torch.zeros(4, dtype=torch.long), r'need measures \[n, k\]'),
                                          (torch.zeros(5, 2), torch.tensor([0, 0, 0, 1, 1]), 'class 1 has 2 images'),
                                          (torch.zeros(3, 2), torch.tensor([0, 0, 12]), 'labels must run from 0 to 9')])
def test_tercile_errors(m, labels, msg):
    with pytest.raises(ValueError, match=msg): tercile_thresholds(m, labels)

def test_attribute_words():
    assert attribute_words(torch.tensor([-1, 1], dtype=torch.int8)) == ('large', 'dark')
    assert attribute_words([1, -1]) == ('small', 'light') and attribute_words([0, 0]) == ()
    with pytest.raises(ValueError, match='each -1, 0 or 1'): attribute_words([3, 0])
    with pytest.raises(ValueError, match='expected 2 codes'): attribute_words([1])

# held-out pairs
def test_held_out_mask_matches_drop_held_out(sample):
    caps = FashionCaptions(*sample)
    for i in range(len(caps)):
        full = attribute_words(caps.codes[i])
        assert bool(caps.is_held_out[i]) == (drop_held_out(int(caps.labels[i]), full) != full)

def test_training_captions_never_pair_held_out_words(sample):
    caps = FashionCaptions(*sample)
    g = torch.Generator().manual_seed(0)
    for _ in range(3): assert not any(map(mentions_held_out, caps.captions(range(len(caps)), g)))
    assert caps.is_held_out.sum() > 0.08 * len(caps)
    everything = FashionCaptions(*sample, thresholds=caps.thresholds, hide_held_out=False)
    held = everything.is_held_out.nonzero()[:, 0]
    assert all(map(mentions_held_out, everything.captions(held, g)))
    assert not any(map(mentions_held_out, everything.captions((~everything.is_held_out).nonzero()[:, 0], g)))

@given(st.lists(st.sampled_from(['small', 'large', 'dark', 'light']), unique=True, max_size=4), st.floats(0, 1), st.integers(0, 2**31 - 1))
def test_omit_words_keeps_an_ordered_subset(words, p, seed):
    out = omit_words(tuple(words), p, torch.Generator().manual_seed(seed))
    rest = iter(words)
    assert all(w in rest for w in out)   # a subsequence: nothing added, order kept
    if p == 0: assert out == tuple(words)
    if p == 1: assert out == ()

def test_omit_words_rate():
    "Each word is left out independently with probability p: counts within 4 standard deviations of the binomial mean."
    g, n, p = torch.Generator().manual_seed(0), 4000, 0.3
    outs = [omit_words(('small', 'dark'), p, g) for _ in range(n)]
    sd = (n * p * (1 - p)) ** 0.5
    for w in ('small', 'dark'): assert abs(sum(w not in o for o in outs) - n * p) < 4 * sd
    both = sum(o == () for o in outs)
    assert abs(both - n * p * p) < 4 * (n * p * p * (1 - p * p)) ** 0.5

@pytest.mark.parametrize('p', [-0.1, 1.5, float('nan')])
def test_omit_words_errors(p):
    with pytest.raises(ValueError, match='probability'): omit_words(('dark',), p)
    with pytest.raises(ValueError, match='probability'): FashionCaptions(torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(2), torch.zeros(10, 2, 2), p_omit=p)

def test_captions_that_omit_words_say_nothing_new(sample):
    "With p_omit the captions only lose attribute words: each caption's words are a subset of the image's, some are missing, no held-out pair."
    full = FashionCaptions(*sample)
    casual = FashionCaptions(*sample, thresholds=full.thresholds, p_omit=0.5)
    g, attrs = torch.Generator().manual_seed(0), {w for pair in ATTRIBUTE_WORDS for w in pair}
    caps = casual.captions(range(len(casual)), g)
    said = [set(split_words(c)) & attrs for c in caps]
    assert all(s <= set(full.words(i)) for i, s in enumerate(said))
    assert sum(len(s) for s in said) < 0.7 * sum(len(full.words(i)) for i in range(len(full)))
    assert not any(map(mentions_held_out, caps))
    assert 'p=0.5' in repr(casual) and 'p=' not in repr(full)

def test_every_held_out_caption_is_caught():
    for name, word in HELD_OUT:
        c = FASHION_CLASSES.index(name)
        other = [a for a in ATTR_SETS if word in a]
        assert all(mentions_held_out(cap) for attrs in other for cap in all_captions(c, attrs))
        assert not any(mentions_held_out(cap) for attrs in ATTR_SETS if word not in attrs for cap in all_captions(c, attrs))

def test_held_out_errors():
    with pytest.raises(ValueError, match="unknown class 'Hat'"): held_out_mask(torch.zeros(1, dtype=torch.long), torch.zeros(1, 2), (('Hat', 'dark'),))
    with pytest.raises(ValueError, match="unknown attribute word 'red'"): mentions_held_out('a red dress', (('Dress', 'red'),))
    with pytest.raises(ValueError, match='give one label per image'): FashionCaptions(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(2))

# tokenizer
vocab_words = st.sampled_from(VOCAB)
separators = st.sampled_from([' ', '  ', ', ', '. ', '\n', ' - ', '/', '!? '])

@st.composite
def vocab_sentences(draw, max_words=14):
    "A text of vocabulary words in random case joined by random punctuation, and its words."
    words = draw(st.lists(vocab_words, max_size=max_words))
    cased = [w.upper() if draw(st.booleans()) else w for w in words]
    text = draw(st.sampled_from(['', ' ', '"'])) + ''.join(w + draw(separators) for w in cased)
    return text, words

@given(vocab_sentences())
def test_round_trip(case):
    text, words = case
    assert TOK.decode(TOK.encode(text)) == ' '.join(words)
    ids, mask = TOK(text)
    assert TOK.decode(ids) == [' '.join(words)] and TOK.decode(ids[0]) == ' '.join(words)

@given(st.lists(vocab_sentences(), max_size=5))
def test_padding_and_mask(cases):
    ids, mask = TOK([t for t, _ in cases])
    assert ids.shape == mask.shape == (len(cases), 16) and ids.dtype == torch.long and mask.dtype == torch.bool
    for row, m, (_, words) in zip(ids, mask, cases):
        n = len(words) + 2
        assert int(m.sum()) == n and m[:n].all() and not m[n:].any()
        assert row[0] == TOK.bos_id and row[n - 1] == TOK.eos_id and (row[n:] == TOK.pad_id).all()
        assert (row[1:n - 1] >= len(SPECIAL_TOKENS)).all()

@given(st.lists(st.one_of(vocab_words, st.text('qxzjkv', min_size=1, max_size=6)), max_size=14))
def test_unknown_words_become_unk(words):
    ids = TOK.encode(' '.join(words))
    expected = [TOK.stoi[w] if w in TOK.stoi else TOK.unk_id for w in words]
    assert ids == [TOK.bos_id, *expected, TOK.eos_id]
    assert TOK.decode(ids) == ' '.join(w if w in TOK.stoi else '<unk>' for w in words)

@pytest.mark.parametrize('text', ['', '   ', '?!.', ' - / '])
def test_empty_prompt_is_bos_eos(text):
    ids, mask = TOK(text)
    assert ids[0, :2].tolist() == [TOK.bos_id, TOK.eos_id] and (ids[0, 2:] == TOK.pad_id).all() and mask.sum() == 2
    assert TOK.decode(ids[0]) == ''

def test_too_long_raises_or_truncates():
    text = ' '.join(['dress'] * 15)
    with pytest.raises(ValueError, match='has 15 words, but at most 14 fit'): TOK(text)
    assert TOK.encode(' '.join(['dress'] * 14)) == [TOK.bos_id] + [TOK.stoi['dress']] * 14 + [TOK.eos_id]
    cut = TOK.encode(text + ' bag', truncate=True)
    assert len(cut) == 16 and cut[-1] == TOK.eos_id and TOK.decode(cut) == ' '.join(['dress'] * 14)
    ids, mask = TOK([text, 'bag'], truncate=True)
    assert mask.sum(1).tolist() == [16, 3]

def test_tokenizer_vocabulary_and_errors():
    assert TOK.itos[:4] == list(SPECIAL_TOKENS) and len(TOK) == len(VOCAB) + 4 and repr(TOK) == f'Tokenizer({len(VOCAB) + 4} tokens, max_len=16)'
    assert Tokenizer(['b', 'a', 'b', '<pad>']).itos == [*SPECIAL_TOKENS, 'b', 'a']   # order kept, repeats dropped
    with pytest.raises(ValueError, match='single lowercase words'): Tokenizer(['Dress'])
    with pytest.raises(ValueError, match='single lowercase words'): Tokenizer(['running shoe'])
    with pytest.raises(ValueError, match='max_len must be a whole number of at least 2'): Tokenizer(['a'], max_len=1)
    with pytest.raises(ValueError, match='id 52 is not in the vocabulary'): TOK.decode([2, 52])
    with pytest.raises(TypeError, match='expected a string'): TOK([None])
    ids, mask = TOK([])
    assert ids.shape == (0, 16) and mask.shape == (0, 16)

def test_decode_stops_at_eos():
    d = TOK.stoi['dress']
    assert TOK.decode([TOK.bos_id, d, TOK.eos_id, d, TOK.pad_id]) == 'dress'
    assert TOK.decode([TOK.bos_id, d, TOK.pad_id, TOK.pad_id]) == 'dress'   # no <eos>: pads are skipped
    assert TOK.decode(torch.tensor([d, TOK.unk_id])) == 'dress <unk>'

def test_tokenizer_refuses_a_string_for_its_vocabulary():
    "Tokenizer('dress') used to build a vocabulary of the letters d, r, e, s."
    with pytest.raises(TypeError, match=r"vocab must be a list of words, got the string 'dress': write \['dress'\]"): Tokenizer('dress')
    assert Tokenizer(('dress', 'bag')).itos[-2:] == ['dress', 'bag']

@pytest.mark.parametrize('max_len, error', [(2.5, TypeError), (3.5, TypeError), (True, TypeError), ('16', TypeError), (1, ValueError)])
def test_tokenizer_max_len_is_a_whole_number(max_len, error):
    "max_len=2.5 used to crash later, and 3.5 to say 'at most 1.5 fit'."
    with pytest.raises(error, match=f'max_len must be a whole number of at least 2 .*, got {max_len!r}'): Tokenizer(['dress'], max_len)
    assert Tokenizer(['dress'], np.int64(4)).max_len == 4 and type(Tokenizer(['dress'], np.int64(4)).max_len) is int

def test_a_long_prompt_is_not_copied_whole_into_the_error():
    from miniai.text import check_prompts
    long = 'dress ' * 20_000
    for call in (lambda: TOK.encode(long), lambda: check_prompts(long, TOK), lambda: check_prompts(long + 'zebra', TOK)):
        with pytest.raises(ValueError) as info: call()
        assert len(str(info.value)) < 1_000 and "'dress dress" in str(info.value) and '...' in str(info.value)

def test_omit_words_refuses_a_string():
    "omit_words('dark', .5) used to split the word into letters."
    with pytest.raises(TypeError, match=r"words must be a tuple of words, got the string 'dark': write \('dark',\)"): omit_words('dark', .5)
    assert omit_words(['dark'], 0.) == ('dark',)

def test_check_prompts_lives_in_the_text_module_and_names_the_vocabulary():
    from miniai.text import check_prompts
    with pytest.raises(ValueError, match="never trained on 'zebra'.*use the words of its captions: .*dress"): check_prompts('a zebra', TOK)
    assert check_prompts(['a dress', ''], TOK) == ['a dress', '']
