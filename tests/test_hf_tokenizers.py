"""Our caption tokenizer (lesson 22) against a Hugging Face `tokenizers` WordLevel model built on our vocabulary: the
same ids, attention masks and decoded text for captions, unknown words, punctuation and long texts. A dev
dependency: skipped when tokenizers is not installed."""
import pytest, torch
from hypothesis import given, settings, strategies as st

tokenizers = pytest.importorskip('tokenizers')
from tokenizers import Regex, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from miniai.text import _WORD, SPECIAL_TOKENS, Tokenizer, caption_tokenizer, caption_vocab, all_captions

def hf_tokenizer(tok:Tokenizer)->tokenizers.Tokenizer:
    """The library's version of `tok`: a WordLevel model on `tok.stoi` with `<unk>` for unknown words, lowercasing, our
    word pattern as the pre-tokenizer (`invert=True` keeps the matches and drops the rest), `<bos> ... <eos>` added
    by a template, then padding with `<pad>` to `max_len`. Ours refuses a text too long unless asked to
    `truncate`; the library's truncates silently, so long texts are compared with `truncate=True`."""
    hf = tokenizers.Tokenizer(WordLevel(tok.stoi, unk_token='<unk>'))
    hf.normalizer = normalizers.Lowercase()
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(_WORD.pattern), behavior='removed', invert=True)
    hf.post_processor = processors.TemplateProcessing(
        single='<bos> $A <eos>', special_tokens=[('<bos>', tok.bos_id), ('<eos>', tok.eos_id)])
    hf.add_special_tokens(['<pad>', '<bos>', '<eos>'])   # skipped when decoding; `<unk>` is shown, as ours does
    hf.enable_padding(pad_id=tok.pad_id, pad_token='<pad>', length=tok.max_len)
    hf.enable_truncation(max_length=tok.max_len)
    return hf

TOK = caption_tokenizer()
HF = hf_tokenizer(TOK)

def assert_same(texts, truncate=False):
    ids, mask = TOK(texts, truncate=truncate)
    encs = HF.encode_batch(texts)
    assert ids.tolist() == [e.ids for e in encs]
    assert mask.long().tolist() == [e.attention_mask for e in encs]
    assert TOK.decode(ids) == HF.decode_batch([e.ids for e in encs])

def test_the_vocabularies_agree():
    assert HF.get_vocab() == TOK.stoi and list(SPECIAL_TOKENS) == TOK.itos[:4]

def test_every_caption_of_every_class_encodes_the_same():
    captions = [c for label in range(10) for attrs in [(), ('small',), ('large', 'dark')]
                for c in all_captions(label, attrs)]
    assert len(captions) > 100
    assert_same(captions)

separators = st.sampled_from([' ', '  ', ', ', '! ', '/', ' - ', '\n', '. '])
words = st.one_of(st.sampled_from(caption_vocab()), st.sampled_from(['Zebra', 'T-SHIRT', "it's", 'well-worn', '3-d',
                                                                     'ñandú', 'x_y', 'Dress']))
texts = st.lists(st.tuples(words, separators), max_size=20).map(lambda ps: ''.join(w + s for w, s in ps))

@settings(max_examples=100)
@given(st.lists(texts, min_size=1, max_size=4))
def test_any_text_encodes_the_same(batch):
    "Vocabulary words in any case, unknown words, hyphens, apostrophes and underscores, texts too long to fit."
    assert_same(batch, truncate=True)
    if all(len(TOK.encode(t, truncate=True)) < TOK.max_len for t in batch): assert_same(batch)

def test_a_small_vocabulary_and_length():
    tok = Tokenizer(['dark', 'dress', 'a'], max_len=5)
    hf = hf_tokenizer(tok)
    ids, mask = tok('A dark, dark dress', truncate=True)
    enc = hf.encode('A dark, dark dress')
    assert ids[0].tolist() == enc.ids == [2, 6, 4, 4, 3] and mask[0].long().tolist() == enc.attention_mask
