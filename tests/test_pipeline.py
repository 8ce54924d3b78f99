"The text-to-image pipeline: seeded and repeatable, prompts repeated in order, the empty prompt unconditional at any guidance, save/load giving the same images, safetensors files holding exactly the state_dict, every fault (missing, cut short, other architecture, bad index, interrupted save, foreign folder), prompt and argument checks, and the measures of decoded images against lesson 22's; the miniai-generate command run as a program (grid PNG, missing pipeline, unknown words, bad options)."
import configparser, json, math, os, struct, subprocess, sys
from pathlib import Path
import numpy as np
import pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from miniai.clip import CLIPModel
from miniai.cond_unet import CondUNet, CondKarrasDenoiser
from miniai.text import caption_tokenizer, caption_vocab, pixel_measures
from miniai.vae import VAE
import miniai.pipeline as pl
from miniai.pipeline import (TextToImagePipeline, check_prompts, save_weights, load_weights, trained_pipeline, generated_measures,
                             decoded_thresholds, PIPELINE_FILES, generate_cli, image_grid, GRID_DPI)
from miniai.samplers import sample_dpmpp_2m, sample_euler
from miniai.samplers import sigmas_karras

D = 16   # token width of the small test models

def small_pipe(seed=0, vae_nfs=(8, 8, 8)):
    "A pipeline of small untrained models (random cross-attention so the prompt matters), enough to test the machinery."
    tok = caption_tokenizer()
    torch.manual_seed(seed)
    vae = VAE(nfs=vae_nfs)
    clip = CLIPModel(len(tok), tok.max_len, d_emb=D, nfs=(4, 8), d_model=D, n_heads=2, n_layers=1)
    unet = CondUNet(nfs=(8, 16), d_context=D, d_pooled=D, n_heads=2)
    for n, p in unet.named_parameters():
        if 'out_proj' in n: torch.nn.init.normal_(p, std=0.3)
    return TextToImagePipeline(vae, clip, tok, CondKarrasDenoiser(unet, 1.), 1.3, dict(note='test'))

@pytest.fixture(scope='module')
def pipe(): return small_pipe()

def g(seed): return torch.Generator().manual_seed(seed)

def test_call_shape_range_and_seeding(pipe):
    a = pipe(['a dark dress', 'a bag'], num_inference_steps=3, generator=g(0), num_images_per_prompt=2)
    assert a.shape == (4, 1, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, pipe(['a dark dress', 'a bag'], num_inference_steps=3, generator=g(0), num_images_per_prompt=2))
    assert (a - pipe(['a dark dress', 'a bag'], num_inference_steps=3, generator=g(1), num_images_per_prompt=2)).abs().max() > 1e-3
    # each prompt's images together, in order: the same as writing the repeated list out
    torch.testing.assert_close(a, pipe(['a dark dress', 'a dark dress', 'a bag', 'a bag'], num_inference_steps=3, generator=g(0)))

def test_prompt_changes_the_images(pipe):
    a = pipe('a dark dress', num_inference_steps=3, generator=g(0))
    b = pipe('a small bag', num_inference_steps=3, generator=g(0))
    assert (a - b).abs().max() > 1e-4

@pytest.mark.parametrize('scale', [0., 2., 7.5])
def test_empty_prompt_is_unconditional_at_any_guidance(pipe, scale):
    torch.testing.assert_close(pipe('', num_inference_steps=3, generator=g(3), guidance_scale=scale),
                               pipe('', num_inference_steps=3, generator=g(3), guidance_scale=1.), atol=1e-5, rtol=0)

def test_guidance_zero_ignores_the_prompt(pipe):
    every = (0., math.inf)   # guided at every level: at guidance 0 the unconditional model throughout
    torch.testing.assert_close(pipe('a dark dress', num_inference_steps=3, generator=g(4), guidance_scale=0., guidance_interval=every),
                               pipe('', num_inference_steps=3, generator=g(4)), atol=1e-5, rtol=0)

def test_guidance_interval(pipe):
    "Guiding at no level is the conditional model alone; the default guides some levels, not all."
    def draw(scale=3., **kw):
        return pipe(['a dark dress', 'a bag'], num_inference_steps=8, generator=g(5), guidance_scale=scale, **kw)
    torch.testing.assert_close(draw(guidance_interval=(100., 200.)), draw(1.), atol=1e-5, rtol=0)
    default, every = draw(), draw(guidance_interval=(0., math.inf))
    assert (default - every).abs().max() > 1e-4
    assert (default - draw(guidance_interval=(100., 200.))).abs().max() > 1e-4
    with pytest.raises(ValueError, match='0 <= low <= high'): draw(guidance_interval=(7., 0.4))

def test_batches_give_every_image(pipe):
    out = pipe(['a bag'] * 5, num_inference_steps=2, generator=g(0), batch_size=2)
    assert out.shape == (5, 1, 32, 32)

@pytest.mark.parametrize('kw,msg', [(dict(num_inference_steps=0), 'num_inference_steps'), (dict(num_inference_steps=2.5), 'num_inference_steps'),
                                    (dict(num_inference_steps=True), 'num_inference_steps'), (dict(guidance_scale=-1.), 'guidance_scale'),
                                    (dict(guidance_scale=float('nan')), 'guidance_scale'), (dict(guidance_scale=float('inf')), 'guidance_scale'),
                                    (dict(guidance_scale='2'), 'guidance_scale'), (dict(num_images_per_prompt=0), 'num_images_per_prompt')])
def test_bad_arguments(pipe, kw, msg):
    with pytest.raises(ValueError, match=msg): pipe('a bag', **kw)

# the sampler
@settings(max_examples=20, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_dpmpp_2m_equals_euler_when_the_estimate_does_not_change(n, seed):
    "With a denoiser whose estimate is the same at every step, the extrapolation adds nothing: DPM-Solver++(2M) is Euler."
    target = torch.randn(3, 4, generator=g(seed), dtype=torch.float64)
    x = 80 * torch.randn(3, 4, generator=g(seed + 1), dtype=torch.float64)
    sigmas = sigmas_karras(n, 0.01, 80.).double()
    torch.testing.assert_close(sample_dpmpp_2m(lambda x, s: target, x, sigmas), sample_euler(lambda x, s: target, x, sigmas))

@pytest.mark.parametrize('sd', [0.3, 0.5, 1.0])
def test_dpmpp_2m_is_second_order_on_gaussian_data(sd):
    "Gaussian data: the exact ODE solution is known; doubling the levels cuts DPM++ 2M's error about 4x (Euler's 2x), and it is below Euler's."
    def den(x, s): return x * sd**2 / (s**2 + sd**2)
    x0 = 80 * torch.randn(500, dtype=torch.float64, generator=g(0))
    exact = den(x0 * math.sqrt(0.01**2 + sd**2) / math.sqrt(80**2 + sd**2), 0.01)
    err = lambda smp, n: (smp(den, x0, sigmas_karras(n, 0.01, 80.).double()) - exact).abs().max().item()
    e_dpm, e_euler = [err(sample_dpmpp_2m, n) for n in (40, 80)], [err(sample_euler, n) for n in (40, 80)]
    assert e_dpm[0] < e_euler[0] and e_dpm[1] < e_euler[1]
    assert e_dpm[0] / e_dpm[1] > 3.2 and e_euler[0] / e_euler[1] < 2.3

# prompts
VOCAB = caption_vocab()
TOK = caption_tokenizer()

@given(st.lists(st.lists(st.sampled_from(VOCAB), max_size=TOK.max_len - 2).map(' '.join), min_size=1, max_size=4))
def test_prompts_of_known_words_pass(prompts):
    assert check_prompts(prompts, TOK) == prompts

@given(st.lists(st.sampled_from(VOCAB), max_size=5), st.text('qxzjv', min_size=1, max_size=6), st.integers(0, 5))
def test_unknown_words_are_named(words, junk, at):
    words.insert(min(at, len(words)), junk)
    with pytest.raises(ValueError, match=f"never trained on '{junk}'"): check_prompts(' '.join(words), TOK)

def test_prompt_errors():
    with pytest.raises(ValueError, match='shorten it'): check_prompts(' '.join(['dress'] * (TOK.max_len - 1)), TOK)
    assert check_prompts(' '.join(['dress'] * (TOK.max_len - 2)), TOK)
    with pytest.raises(ValueError, match='non-empty list'): check_prompts([], TOK)
    with pytest.raises(ValueError, match='non-empty list'): check_prompts(None, TOK)
    with pytest.raises(TypeError, match='must be a string'): check_prompts(['a bag', 3], TOK)
    assert check_prompts('', TOK) == [''] and check_prompts('A Dark DRESS!', TOK) == ['A Dark DRESS!']
    assert 'words of its captions: a an and' in pytest.raises(ValueError, check_prompts, 'a red bag', TOK).value.args[0]

# saving and loading
def test_safetensors_file_is_the_state_dict(tmp_path):
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
    raw = save_weights(m, tmp_path/'m.safetensors').read_bytes()
    n = struct.unpack('<Q', raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    state = m.state_dict()
    assert set(header) - {'__metadata__'} == set(state)
    assert all(header[k]['shape'] == list(v.shape) for k, v in state.items())
    again = load_weights(torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3)), tmp_path/'m.safetensors')
    for a, b in zip(state.values(), again.state_dict().values()): assert torch.equal(a, b)
    assert not list(tmp_path.glob('.*part'))   # no temporary file left behind

def test_save_and_load_give_the_same_images(pipe, tmp_path):
    folder = pipe.save_pretrained(tmp_path/'p')
    assert sorted(p.name for p in folder.iterdir()) == sorted([*PIPELINE_FILES.values(), 'model_index.json'])
    loaded = TextToImagePipeline.from_pretrained(folder)
    assert loaded.record == {'note': 'test'} and loaded.latent_scale == pipe.latent_scale and loaded.tokenizer.itos == pipe.tokenizer.itos
    torch.testing.assert_close(loaded(['a bag', ''], num_inference_steps=3, generator=g(5)), pipe(['a bag', ''], num_inference_steps=3, generator=g(5)), atol=0, rtol=0)
    pipe.save_pretrained(folder)   # saving over a pipeline folder is allowed
    TextToImagePipeline.from_pretrained(folder)

@pytest.fixture
def saved(pipe, tmp_path): return pipe.save_pretrained(tmp_path/'p')

def test_missing_folder_or_index(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match='no model_index.json'): TextToImagePipeline.from_pretrained(tmp_path/'nowhere')
    (saved/'model_index.json').unlink()
    with pytest.raises(FileNotFoundError, match='save one with save_pretrained'): TextToImagePipeline.from_pretrained(saved)

@pytest.mark.parametrize('text,msg', [('{"format": ', 'not valid JSON'), ('[1, 2]', 'not written by save_pretrained'),
                                      ('{"format": "something else"}', 'not written by save_pretrained')])
def test_bad_index(saved, text, msg):
    (saved/'model_index.json').write_text(text)
    with pytest.raises(ValueError, match=msg): TextToImagePipeline.from_pretrained(saved)

@pytest.mark.parametrize('name', list(PIPELINE_FILES))
def test_weight_file_faults(saved, name):
    path = saved/PIPELINE_FILES[name]
    good = path.read_bytes()
    path.write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match=f'{PIPELINE_FILES[name]} is not a readable safetensors file'): TextToImagePipeline.from_pretrained(saved)
    path.write_bytes(b'')
    with pytest.raises(ValueError, match='not a readable safetensors file'): TextToImagePipeline.from_pretrained(saved)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f'{PIPELINE_FILES[name]} is missing'): TextToImagePipeline.from_pretrained(saved)

def test_weights_of_another_model(saved, tmp_path):
    other = small_pipe(vae_nfs=(8, 16, 16)).save_pretrained(tmp_path/'other')
    (saved/PIPELINE_FILES['vae']).write_bytes((other/PIPELINE_FILES['vae']).read_bytes())
    with pytest.raises(ValueError, match='different architecture than this VAE'): TextToImagePipeline.from_pretrained(saved)

def test_failed_save_keeps_the_old_pipeline(pipe, saved, monkeypatch):
    "A save that dies after the VAE leaves the old pipeline whole: it loads and gives the old images."
    before = pipe('a bag', num_inference_steps=2, generator=g(0))
    real = pl.save_weights
    def dying(model, path):
        if path.name == PIPELINE_FILES['clip']: raise OSError('disk full')
        return real(model, path)
    monkeypatch.setattr(pl, 'save_weights', dying)
    with pytest.raises(OSError, match='disk full'): small_pipe(seed=1).save_pretrained(saved)
    again = TextToImagePipeline.from_pretrained(saved)
    torch.testing.assert_close(again('a bag', num_inference_steps=2, generator=g(0)), before, atol=0, rtol=0)
    assert sorted(p.name for p in saved.parent.iterdir()) == ['p']   # no .part or .old left

def test_record_json_cannot_hold_is_refused_before_writing(pipe, saved):
    bad = small_pipe(seed=1); bad.record = dict(when=object())
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    with pytest.raises(TypeError, match="record can't be saved as JSON"): bad.save_pretrained(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    bad.record = dict(loss=float('nan'))
    with pytest.raises(TypeError, match="record can't be saved as JSON"): bad.save_pretrained(saved)

def test_folder_an_older_save_left_without_index_can_be_saved_again(pipe, saved):
    "Older versions removed model_index.json first: a folder they left half-saved is saved into, not refused."
    (saved/'model_index.json').unlink()
    pipe.save_pretrained(saved)
    TextToImagePipeline.from_pretrained(saved)

def test_a_save_killed_between_its_renames_is_restored(pipe, saved):
    saved.rename(saved.with_name('.p.old'))
    TextToImagePipeline.from_pretrained(saved)   # restores it
    assert saved.is_dir() and not saved.with_name('.p.old').exists()

def _save_forever(pipe, folder):
    torch.set_num_threads(1)
    while True: pipe.save_pretrained(folder)

def test_kill_9_during_saves_never_loses_the_pipeline(pipe, saved):
    "Fault injection: a process saving the pipeline over and over is killed at random moments; a complete copy always loads."
    import multiprocessing, os, random, signal, time
    other = small_pipe(seed=1)
    expect = {pipe('a bag', num_inference_steps=2, generator=g(0)).sum().item(), other('a bag', num_inference_steps=2, generator=g(0)).sum().item()}
    rng = random.Random(0)
    for _ in range(8):
        child = multiprocessing.get_context('fork').Process(target=_save_forever, args=(other, saved)); child.start()
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(child.pid, signal.SIGKILL); child.join()
        loaded = TextToImagePipeline.from_pretrained(saved)
        assert loaded('a bag', num_inference_steps=2, generator=g(0)).sum().item() in expect
    pipe.save_pretrained(saved)
    assert sorted(p.name for p in saved.parent.iterdir()) == ['p']   # the next save cleared what the killed ones left

def test_foreign_folder_is_left_alone(pipe, tmp_path):
    (tmp_path/'mine').mkdir(); (tmp_path/'mine'/'notes.txt').write_text('keep')
    with pytest.raises(FileExistsError, match='not a pipeline folder'): pipe.save_pretrained(tmp_path/'mine')
    assert [p.name for p in (tmp_path/'mine').iterdir()] == ['notes.txt']
    pipe.save_pretrained(tmp_path/'empty')   # a new folder is made

def test_trained_pipeline_loads_the_saved_folder(pipe, tmp_path, monkeypatch):
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path))
    from miniai.store import models_dir
    pipe.save_pretrained(models_dir()/'text_to_image')
    loaded = trained_pipeline(verbose=False)
    torch.testing.assert_close(loaded('a bag', num_inference_steps=2, generator=g(0)), pipe('a bag', num_inference_steps=2, generator=g(0)), atol=0, rtol=0)

# measuring decoded images
@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6))
def test_generated_measures_match_lesson_22_on_real_pixels(seed, n):
    gen = g(seed)
    x = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen) * (torch.rand(n, 28, 28, generator=gen) < 0.5)
    x32 = F.pad(x.float()[:, None] / 255, (2, 2, 2, 2))
    torch.testing.assert_close(generated_measures(x32, cutoff=0), pixel_measures(x))
    cut = int(torch.randint(0, 40, (), generator=gen))
    torch.testing.assert_close(generated_measures(x32, cutoff=cut), pixel_measures(x * (x > cut)))

def test_generated_measures_errors():
    with pytest.raises(ValueError, match=r'\[n, 1, 32, 32\]'): generated_measures(torch.zeros(2, 1, 28, 28))

def test_decoded_thresholds_shape_and_order(pipe):
    gen = g(0)
    x = (torch.rand(60, 28, 28, generator=gen) * 255).to(torch.uint8) * (torch.rand(60, 28, 28, generator=gen) < torch.linspace(0.2, 0.8, 60)[:, None, None])
    thr = decoded_thresholds(pipe.vae, x, torch.arange(60) % 10)
    assert thr.shape == (10, 2, 2) and (thr[..., 0] <= thr[..., 1]).all()

@pytest.mark.parametrize('kw', [dict(guidance_scale=np.float32(2.)), dict(guidance_scale=np.float64(2.)), dict(guidance_scale=2),
                                dict(num_inference_steps=np.int64(3)), dict(num_images_per_prompt=np.int32(1))])
def test_numbers_of_any_kind_are_accepted(pipe, kw):
    "numpy float32 guidance and numpy int steps were refused while numpy float64 worked."
    base = dict(guidance_scale=2., num_inference_steps=3, num_images_per_prompt=1)
    torch.testing.assert_close(pipe('a bag', generator=g(0), **{**base, **kw}), pipe('a bag', generator=g(0), **base), atol=0, rtol=0)

@pytest.mark.parametrize('kw,msg', [(dict(guidance_scale=True), 'guidance_scale'), (dict(num_images_per_prompt=10**9), 'at most 1,000,000 images')])
def test_bools_and_huge_requests_are_refused(pipe, kw, msg):
    "guidance_scale=True was taken as 1; 10**9 images built a list of a billion prompts before failing for memory."
    with pytest.raises(ValueError, match=msg): pipe('a bag', **kw)

def test_images_that_come_out_nan_raise(pipe):
    with pytest.raises(FloatingPointError, match='not finite.*guidance_scale=1e\\+30'): pipe('a bag', num_inference_steps=2, guidance_scale=1e30, generator=g(0), guidance_interval=(0., math.inf))

@pytest.mark.parametrize('scale', [0., float('nan'), float('inf'), -1.])
def test_latent_scale_must_be_finite_and_positive(pipe, scale):
    with pytest.raises(ValueError, match='latent_scale must be a finite number > 0'):
        TextToImagePipeline(pipe.vae, pipe.clip, pipe.tokenizer, pipe.denoiser, scale)

# the miniai-generate command
ROOT = Path(__file__).resolve().parent.parent
ROW = GRID_DPI + GRID_DPI // 4   # a row of the grid: a one-inch image under a quarter-inch title

def png_size(path): return struct.unpack('>II', Path(path).read_bytes()[16:24])   # width, height from the header

@pytest.fixture
def data(pipe, tmp_path, monkeypatch):
    "A data folder (MINIAI_DATA) with the small pipeline where trained_pipeline saves it; the cwd is `tmp_path`."
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path/'data'))
    monkeypatch.chdir(tmp_path)
    from miniai.store import models_dir
    pipe.save_pretrained(models_dir()/'text_to_image')
    return tmp_path

@pytest.fixture
def no_data(tmp_path, monkeypatch):
    "An empty data folder: no pipeline anywhere."
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path/'data'))
    monkeypatch.chdir(tmp_path)
    return tmp_path

def run_command(folder, *args):
    "Run `miniai-generate ARGS` in `folder` as pip's script for settings.ini's entry would: (status, stdout, stderr)."
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    module, func = dict(e.split('=') for e in cfg['DEFAULT']['console_scripts'].split())['miniai-generate'].split(':')
    script = folder/'miniai-generate'
    script.write_text(f'import re, sys\nfrom {module} import {func}\nif __name__ == "__main__":\n'
                      f'    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])\n'
                      f'    sys.exit({func}())\n')
    import miniai   # the child imports the same miniai as this process
    path = os.pathsep.join([str(Path(miniai.__file__).parent.parent), os.environ.get('PYTHONPATH', '')])
    env = {**os.environ, 'PYTHONPATH': path, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, str(script), *args], cwd=folder, env=env, capture_output=True, text=True,
                       timeout=600)
    return r.returncode, r.stdout, r.stderr

def test_command_writes_a_labelled_grid(data):
    status, out, err = run_command(data, 'a small dark bag', 'a bag', '--n', '3', '--steps', '2', '--seed', '1',
                                   '--out', 'bags.png')
    assert status == 0, err
    assert out.startswith('wrote bags.png: 2 prompt(s) x 3 images, guidance 2, 2 steps, seed 1')
    assert png_size(data/'bags.png') == (4 * GRID_DPI, 2 * ROW)   # at least 4 columns wide, a row per prompt
    assert (data/'bags.png').read_bytes()[24:26] == bytes([8, 0])     # 8 bits, greyscale
    assert not list(data.glob('.*part'))

def test_command_without_a_pipeline_says_how_to_train(no_data):
    status, out, err = run_command(no_data, 'a small dark bag', '--out', 'bags.png')
    assert status == 1 and out == ''
    assert len(err.strip().splitlines()) == 1, err   # one line
    assert 'no trained text-to-image pipeline in' in err and 'trained_pipeline()' in err
    assert '25 to 41 minutes' in err and 'lesson 26' in err
    assert not (no_data/'bags.png').exists()
    assert [p.name for p in (no_data/'data').rglob('*')] == ['models']   # nothing trained or saved

def test_command_refuses_unknown_words_listing_the_vocabulary(data):
    status, out, err = run_command(data, 'a bag', 'a red bag')
    assert status == 2 and "never trained on 'red'" in err and 'words of its captions: a an and' in err
    assert not (data/'generated.png').exists()

def test_command_refuses_options_of_the_wrong_type(data):
    status, _, err = run_command(data, 'a bag', '--n', 'eight')
    assert status == 2 and "argument --n: invalid int value: 'eight'" in err

@pytest.mark.parametrize('kw,msg', [
    (dict(n=0), '--n must be a whole number from 1 to 32, got 0'), (dict(n=33), '--n'), (dict(n=2.5), '--n'),
    (dict(n=True), '--n'), (dict(steps=0), '--steps'), (dict(seed=-1), '--seed'),
    (dict(guidance=-1.), '--guidance must be a finite number >= 0'), (dict(guidance=float('nan')), '--guidance'),
    (dict(guidance=float('inf')), '--guidance'), (dict(guidance='2'), '--guidance'),
    (dict(out='bags.jpg'), 'must name a .png file'), (dict(out='nowhere/bags.png'), 'no folder nowhere'),
    (dict(prompts=[]), 'give 1 to 16 prompts'), (dict(prompts=['a bag'] * 17), 'give 1 to 16 prompts')])
def test_bad_options_are_refused_before_loading(no_data, capsys, kw, msg):
    "Exit status 2 naming the option, even with no pipeline saved (which would be status 1): nothing is loaded first."
    with pytest.raises(SystemExit) as e: generate_cli(**{'prompts': ['a bag'], **kw})
    assert e.value.code == 2 and msg in capsys.readouterr().err

def test_out_that_is_a_folder_is_refused(no_data, capsys):
    (no_data/'pics.png').mkdir()
    with pytest.raises(SystemExit) as e: generate_cli(['a bag'], out='pics.png')
    assert e.value.code == 2 and 'is a folder' in capsys.readouterr().err

@pytest.mark.parametrize('prompts,n,size', [(['a bag'], 1, (4, 1)), (['a bag'], 6, (6, 1)),
                                            (['a bag', '', 'a dark dress'], 5, (5, 3))])
def test_grid_size_follows_the_grid(data, capsys, prompts, n, size):
    generate_cli(prompts, n=n, steps=2, out='g.png')
    assert png_size(data/'g.png') == (size[0] * GRID_DPI, size[1] * ROW)

def test_same_seed_same_png(data, capsys):
    png = lambda seed, name: (generate_cli(['a bag'], n=2, steps=2, seed=seed, out=name), (data/name).read_bytes())[1]
    assert png(0, 'a.png') == png(0, 'b.png') != png(1, 'c.png')

def test_the_pipeline_is_called_with_keywords_only(data, capsys, monkeypatch):
    calls, real = [], TextToImagePipeline.__call__
    def spy(self, *args, **kw): calls.append((args, kw)); return real(self, *args, **kw)
    monkeypatch.setattr(TextToImagePipeline, '__call__', spy)
    generate_cli(['a bag', 'a coat'], n=2, guidance=3., steps=2, seed=5, out='g.png')
    (args, kw), = calls
    assert args == (['a bag', 'a coat'],)
    assert sorted(kw) == ['generator', 'guidance_scale', 'num_images_per_prompt', 'num_inference_steps']
    assert kw['generator'].initial_seed() == 5
    assert (kw['num_inference_steps'], kw['guidance_scale'], kw['num_images_per_prompt']) == (2, 3., 2)

def test_a_failed_write_keeps_the_old_png(data, capsys, monkeypatch):
    generate_cli(['a bag'], n=2, steps=2, out='g.png')
    before = (data/'g.png').read_bytes()
    from PIL import Image as PILImage
    def dying(self, f, **kw): f.write(b'half a png'); raise OSError('disk full')
    monkeypatch.setattr(PILImage.Image, 'save', dying)
    with pytest.raises(OSError, match='disk full'): generate_cli(['a coat'], n=2, steps=2, out='g.png')
    assert (data/'g.png').read_bytes() == before and not list(data.glob('.*part'))

def test_a_broken_pipeline_exits_1_naming_the_file(data, capsys):
    from miniai.store import models_dir
    folder = models_dir()/'text_to_image'
    (folder/PIPELINE_FILES['unet']).write_bytes(b'')
    with pytest.raises(SystemExit) as e: generate_cli(['a bag'], out='g.png')
    assert e.value.code == 1 and 'unet.safetensors is not a readable safetensors file' in capsys.readouterr().err
    (folder/PIPELINE_FILES['vae']).unlink()
    with pytest.raises(SystemExit) as e: generate_cli(['a bag'], out='g.png')
    assert e.value.code == 1 and 'vae.safetensors is missing' in capsys.readouterr().err

def test_images_that_are_not_finite_exit_1(data, capsys):
    with pytest.raises(SystemExit) as e: generate_cli(['a bag'], guidance=1e30, steps=8, out='g.png')   # 8 levels: the middle three guided
    assert e.value.code == 1 and 'not finite' in capsys.readouterr().err and not (data/'g.png').exists()

def test_image_grid_errors():
    with pytest.raises(ValueError, match='for 2 titles'): image_grid(torch.zeros(5, 1, 32, 32), ['a', 'b'])
    with pytest.raises(ValueError, match='for 0 titles'): image_grid(torch.zeros(4, 1, 32, 32), [])
    with pytest.raises(ValueError, match='for 1 titles'): image_grid(torch.zeros(4, 3, 32, 32), ['a'])

def test_the_call_is_its_four_steps(pipe):
    "`__call__` reads as encode the prompt, prepare latents, denoise, decode: the steps by hand give the same images."
    prompts = ['a photo of a dark dress', 'a bag']
    cond, uncond = pipe.encode_prompt(prompts)
    latents = pipe.prepare_latents(2, g(3))
    by_hand = pipe.decode(pipe.denoise(latents, cond, uncond, 2., 4, generator=g(3)))
    torch.testing.assert_close(pipe(prompts, num_inference_steps=4, generator=g(3)), by_hand, rtol=0, atol=0)

def test_the_call_takes_keywords_only(pipe):
    with pytest.raises(TypeError): pipe('a bag', 4)

def test_guidance_one_runs_the_unet_once_per_step(pipe):
    "Guidance 1 used to run the doubled batch (conditional and unconditional) although only the conditional counts."
    sizes = []
    hook = pipe.denoiser.model.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    try:
        pipe(['a bag'] * 3, num_inference_steps=4, generator=g(0), guidance_scale=1.)
        one = sizes[:]; sizes.clear()
        pipe(['a bag'] * 3, num_inference_steps=4, generator=g(0), guidance_scale=2., guidance_interval=(0., math.inf))
        every = sizes[:]; sizes.clear()
        pipe(['a bag'] * 3, num_inference_steps=8, generator=g(0), guidance_scale=2.)   # the default interval
    finally: hook.remove()
    assert set(one) == {3} and set(every) == {6} and len(one) == len(every)
    assert sizes == [3] * 3 + [6] * 3 + [3] * 2   # 8 levels: the middle three (sigma 5.97, 1.92, 0.49) guided

def test_image_size_follows_the_argument(pipe):
    assert pipe('a bag', num_inference_steps=2, generator=g(0), image_size=16).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match='image_size must be a multiple of 4'):
        pipe('a bag', num_inference_steps=2, image_size=18)

@pytest.mark.parametrize('key, value, msg', [('vae', [1, 2], 'vae of the wrong kind'), ('sigma_data', 'big', 'sigma_data of the wrong kind'),
    ('latent_scale', True, 'latent_scale of the wrong kind'), ('unet', {'nfs': 'abc'}, 'unet configuration builds no CondUNet'),
    ('tokenizer', {'vocab': 5}, 'tokenizer is not a vocabulary'), ('clip', {'colour': 1}, 'clip configuration builds no CLIPModel')])
def test_model_index_of_wrong_kinds_is_named(saved, key, value, msg):
    "Wrong types in model_index.json used to end in a raw TypeError or KeyError without the file's name."
    index = json.loads((saved/'model_index.json').read_text()); index[key] = value
    (saved/'model_index.json').write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f'model_index.json in p: .*{msg}'): TextToImagePipeline.from_pretrained(saved)

def test_a_saved_model_of_other_default_settings_is_refused(tmp_path):
    "A config.json whose n_heads was edited (same weight shapes) used to load silently; the whole configuration is compared."
    from miniai.store import load_or_train, CONFIG_FILE
    from miniai.clip import CLIPModel
    kw = dict(vocab_size=10, max_len=6, d_emb=8, nfs=(4, 8), d_model=8, n_layers=1)
    load_or_train(tmp_path/'c', CLIPModel, kw, lambda m: {}, 'clip', verbose=False)
    meta = json.loads((tmp_path/'c'/CONFIG_FILE).read_text()); meta['config']['n_heads'] = 2
    (tmp_path/'c'/CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match='n_heads is 2 there, not 4'): load_or_train(tmp_path/'c', CLIPModel, kw, lambda m: {}, 'clip', verbose=False)
