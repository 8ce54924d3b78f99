"`miniai.store`: the models folder of full and test-size runs, `file_lock`, which makes loading or training a shared model one process at a time, and trained models kept as folders by `save_trained` and `load_or_train`."
import json, multiprocessing, os, random, signal, time
from pathlib import Path
from types import SimpleNamespace
import pytest
import torch
import miniai.ddpm as ddpm
from miniai.store import (CONFIG_FILE, WEIGHTS_FILE, file_lock, load_or_train, load_state, load_trained, models_dir, read_config,
                          save_model, save_trained, state_digest)
from miniai.unet import UNet

fork = multiprocessing.get_context('fork')

@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path))
    return tmp_path

def test_models_dir_of_test_size_runs_is_apart(data_dir, monkeypatch):
    assert models_dir() == data_dir/'models' and models_dir().is_dir()
    monkeypatch.setenv('IN_TEST', '1')
    assert models_dir() == data_dir/'models-test-size' and models_dir().is_dir()
    monkeypatch.setenv('MINIAI_FULL', '1')
    assert models_dir() == data_dir/'models'

def _append(path, line):
    with open(path, 'a') as f: f.write(line + '\n')

def _hold(target, log, seconds):
    with file_lock(target):
        _append(log, 'child has it')
        time.sleep(seconds)
        _append(log, 'child lets go')

def _wait_for(path):
    for _ in range(1000):
        if path.exists(): return
        time.sleep(0.01)
    raise TimeoutError(path)

@pytest.mark.parametrize('seconds', [0.05, 0.3])
def test_file_lock_excludes_other_processes(tmp_path, seconds):
    target, log = tmp_path/'model.pt', tmp_path/'log.txt'
    child = fork.Process(target=_hold, args=(target, log, seconds)); child.start()
    _wait_for(log)
    with file_lock(target): _append(log, 'parent has it')
    child.join()
    assert log.read_text().splitlines() == ['child has it', 'child lets go', 'parent has it']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['log.txt']   # no lock file left behind

def test_file_lock_is_reentrant_and_released_on_error(tmp_path):
    target = tmp_path/'sub'/'model.pt'
    with pytest.raises(KeyError):
        with file_lock(target):
            with file_lock(target): raise KeyError('inside')
    child = fork.Process(target=_hold, args=(target, tmp_path/'log.txt', 0)); child.start(); child.join(10)
    assert child.exitcode == 0 and (tmp_path/'log.txt').read_text().count('\n') == 2   # the lock was free again

def _slow_trained_ddpm(started):
    "trained_ddpm in another process, finding no model, whose training takes a second and gives other weights."
    torch.set_num_threads(1)   # a child forked after torch used its thread pool hangs in its first threaded operation otherwise
    def slow_train(model, dls, epochs, **kwargs):   # kwargs: train_ddpm's other settings (abar)
        Path(started).touch()
        time.sleep(1)
        with torch.no_grad():
            for p in model.parameters(): p.add_(1.)
        return SimpleNamespace(dls=SimpleNamespace(train=[0] * 3))
    ddpm.train_ddpm, ddpm.fashion32_dls = slow_train, lambda **kw: None
    ddpm.trained_ddpm(verbose=False)

def test_a_lesson_saving_while_another_trains_keeps_its_model(data_dir):
    "Lesson 17 saves its model while lesson 18, started earlier, trains one for the same file: lesson 17 must load its own back."
    started = data_dir/'started'
    child = fork.Process(target=_slow_trained_ddpm, args=(started,)); child.start()
    _wait_for(started)
    torch.manual_seed(0)
    mine = UNet()
    save_trained(mine, models_dir()/ddpm.DDPM_NAME)   # waits until the other process has saved
    child.join(60)
    assert child.exitcode == 0
    loaded, _ = ddpm.trained_ddpm(verbose=False)
    for (k, a), b in zip(mine.state_dict().items(), loaded.state_dict().values()): assert torch.equal(a, b), k

def _save_forever(save, target):
    "Save a UNet with `save(model, target)` over and over, in a forked child, until killed."
    torch.set_num_threads(1)
    torch.manual_seed(1)
    model = UNet()
    while True: save(model, target)

def _kill_while_saving(save, load, target, times=8):
    "Fault injection: kill -9 a process saving to `target` over and over, at random moments; `load` must succeed each time."
    rng = random.Random(0)
    for _ in range(times):
        child = fork.Process(target=_save_forever, args=(save, target)); child.start()
        time.sleep(rng.uniform(0.05, 0.5))
        os.kill(child.pid, signal.SIGKILL); child.join()
        load(target)
    save(UNet(), target)

def test_kill_9_during_save_model_never_loses_the_model(tmp_path):
    "Fault injection: a process saving a model over and over is killed at random moments; a complete copy always loads."
    from miniai.store import load_model
    torch.manual_seed(0)
    path = save_model(UNet(), tmp_path/'model.pt')
    _kill_while_saving(save_model, lambda p: load_model(UNet(), p), path)
    assert [p.name for p in tmp_path.iterdir()] == ['model.pt']   # the next save removed what the killed ones left

def _small(width=4): return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.BatchNorm1d(width))

def _train_small(model):
    with torch.no_grad(): model[0].weight.fill_(0.5)
    return dict(epochs=1)

def test_load_or_train_trains_once_then_loads(tmp_path):
    calls = []
    def train(model): calls.append(1); return _train_small(model)
    a, rec = load_or_train(tmp_path/'m', _small, dict(width=4), train, 'the small model', dict(data='toy'), verbose=False)
    b, rec2 = load_or_train(tmp_path/'m', _small, dict(width=4), train, 'the small model', dict(data='toy'), verbose=False)
    assert calls == [1] and rec == rec2 == dict(epochs=1, data='toy') and not b.training
    assert torch.equal(a[0].weight, b[0].weight) and state_digest(a) == state_digest(b)
    assert sorted(p.name for p in (tmp_path/'m').iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m']   # no lock or .part left

def test_load_or_train_refuses_other_settings_naming_them(tmp_path):
    "Tampered or other settings used to load silently: the vocabulary order, n_heads, max_len, the CLIP beside a U-Net."
    load_or_train(tmp_path/'m', _small, dict(width=4), _train_small, 'the small model', dict(vocab=['a', 'b']), verbose=False)
    with pytest.raises(ValueError, match=r"width is 4 there, not 5.*delete the folder m"):
        load_or_train(tmp_path/'m', _small, dict(width=5), _train_small, 'the small model', verbose=False)
    with pytest.raises(ValueError, match=r"vocab is \['a', 'b'\] there, not \['b', 'a'\]"):
        load_or_train(tmp_path/'m', _small, dict(width=4), _train_small, 'the small model', dict(vocab=['b', 'a']), verbose=False)
    meta = json.loads((tmp_path/'m'/CONFIG_FILE).read_text()); meta['config']['width'] = 5
    (tmp_path/'m'/CONFIG_FILE).write_text(json.dumps(meta))   # a configuration edited by hand
    with pytest.raises(ValueError, match='width is 5 there, not 4'):
        load_or_train(tmp_path/'m', _small, dict(width=4), _train_small, 'the small model', verbose=False)

def test_floats_in_settings_match_within_rounding(tmp_path):
    load_or_train(tmp_path/'m', _small, {}, _train_small, 'm', dict(scale=0.574912345), verbose=False)
    load_or_train(tmp_path/'m', _small, {}, _train_small, 'm', dict(scale=0.574912345 * (1 + 1e-9)), verbose=False)
    with pytest.raises(ValueError, match='scale is'):
        load_or_train(tmp_path/'m', _small, {}, _train_small, 'm', dict(scale=0.58), verbose=False)

def test_a_flipped_byte_in_the_weights_is_refused(tmp_path):
    "A flipped byte inside a weights file used to load without error: the SHA-256 in config.json catches it."
    folder = save_trained(_small(), tmp_path/'m', config=dict(width=4))
    raw = bytearray((folder/WEIGHTS_FILE).read_bytes()); raw[len(raw) // 2] ^= 0x10
    (folder/WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match='SHA-256 differs'): load_trained(folder, _small)
    with pytest.raises(ValueError, match='delete the folder m'):
        load_or_train(folder, _small, dict(width=4), _train_small, 'm', verbose=False)

@pytest.mark.parametrize('meta', ['[]', '{"format": "miniai trained model, version 1"}', 'null',
    '{"format": "miniai trained model, version 1", "model": "X", "config": [], "record": {}, "sha256": "0"}',
    '{"format": "miniai trained model, version 1", "model": "X", "config": {}, "record": null, "sha256": "0"}'])
def test_config_json_of_wrong_kinds_is_named(tmp_path, meta):
    "A list or null record used to be accepted, or to fail with a raw TypeError/KeyError."
    folder = save_trained(_small(), tmp_path/'m', config=dict(width=4))
    (folder/CONFIG_FILE).write_text(meta)
    with pytest.raises(ValueError, match='config.json in m was not written by save_trained'): read_config(folder)

def test_weights_of_another_dtype_are_refused(tmp_path):
    "int64, bool, complex or float16 tensors used to load silently into float32 parameters (zeros, 1.0, dropped parts, inf)."
    model = _small()
    for dtype in (torch.int64, torch.bool, torch.complex64, torch.float16):
        state = {k: (v.to(dtype) if k == '0.weight' else v) for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match=f'0.weight is {dtype} in the file but torch.float32 in the model'):
            load_state(_small(), state, 'm.safetensors')

def test_training_is_refused_before_it_starts_where_nothing_can_be_saved(tmp_path, monkeypatch):
    "A read-only data folder used to fail only after all the training, losing the model."
    import miniai.store as store
    calls = []
    def train(model): calls.append(1); return {}
    def read_only(*a, **k): raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(store.tempfile, 'TemporaryFile', read_only)
    with pytest.raises(PermissionError, match='MINIAI_DATA'):
        load_or_train(tmp_path/'m', _small, {}, train, 'm', verbose=False)
    assert calls == []

def test_a_folder_of_other_files_is_never_replaced(tmp_path):
    (tmp_path/'m').mkdir(); (tmp_path/'m'/'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='holds other files'):
        load_or_train(tmp_path/'m', _small, {}, _train_small, 'm', verbose=False)
    assert (tmp_path/'m'/'notes.txt').read_text() == 'keep me'

def test_kill_9_during_save_trained_never_loses_the_model(tmp_path):
    "Fault injection: a process saving a model folder over and over is killed at random moments; a complete copy always loads."
    torch.manual_seed(0)
    folder = save_trained(UNet(), tmp_path/'model')
    _kill_while_saving(lambda m, f: save_trained(m, f, dict(epochs=1)), lambda f: load_trained(f, UNet), folder)
    assert [p.name for p in tmp_path.iterdir()] == ['model']   # the next save removed what the killed ones left

def test_load_state_names_a_value_that_is_not_a_tensor():
    "A number or a list in a state dict used to end in `AttributeError: 'int' object has no attribute 'shape'`."
    from miniai.store import load_state
    model = torch.nn.Linear(2, 1)
    for odd in (3, [1., 2.], None):
        state = dict(model.state_dict(), bias=odd)
        with pytest.raises(TypeError, match=f"weights.pt: 'bias' holds a {type(odd).__name__}, not a tensor.*retrain it"):
            load_state(model, state, 'weights.pt', ': retrain it')
    with pytest.raises(TypeError, match='weights.pt holds a list, not a state_dict'): load_state(model, [1], 'weights.pt')
    load_state(model, model.state_dict(), 'weights.pt')

def test_loading_leaves_the_global_random_state_alone(tmp_path):
    "Comparing settings builds a model; that must not draw from the global generator a lesson samples with next."
    load_or_train(tmp_path/'m', _small, dict(width=4), _train_small, 'm', verbose=False)
    torch.manual_seed(3); load_or_train(tmp_path/'m', _small, dict(width=4), _train_small, 'm', verbose=False)
    after_load = torch.rand(3)
    # load_trained builds the model to load into once, as any loader must: the comparison adds no draws
    torch.manual_seed(3); load_trained(tmp_path/'m', _small); after_plain_load = torch.rand(3)
    assert torch.equal(after_load, after_plain_load)
