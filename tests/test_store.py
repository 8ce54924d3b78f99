"`miniai.store`: the models folder of full and test-size runs, and `file_lock`, which makes loading or training a shared model one process at a time."
import multiprocessing, time
from pathlib import Path
import pytest
import torch
import miniai.ddpm as ddpm
from miniai.store import file_lock, models_dir, save_model
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
    def slow_train(model, dls, epochs):
        Path(started).touch()
        time.sleep(1)
        with torch.no_grad():
            for p in model.parameters(): p.add_(1.)
    ddpm.train_ddpm, ddpm.fashion32_dls = slow_train, lambda **kw: None
    ddpm.trained_ddpm(verbose=False)

def test_a_lesson_saving_while_another_trains_keeps_its_model(data_dir):
    "Lesson 17 saves its model while lesson 18, started earlier, trains one for the same file: lesson 17 must load its own back."
    started = data_dir/'started'
    child = fork.Process(target=_slow_trained_ddpm, args=(started,)); child.start()
    _wait_for(started)
    torch.manual_seed(0)
    mine, path = UNet(), models_dir()/ddpm.DDPM_FILE
    with file_lock(path): save_model(mine, path)   # waits until the other process has saved
    child.join(60)
    assert child.exitcode == 0
    loaded, _ = ddpm.trained_ddpm(verbose=False)
    for (k, a), b in zip(mine.state_dict().items(), loaded.state_dict().values()): assert torch.equal(a, b), k

def _save_forever(path):
    torch.set_num_threads(1)
    torch.manual_seed(1)
    model = UNet()
    while True: save_model(model, path)

def test_kill_9_during_save_model_never_loses_the_model(tmp_path):
    "Fault injection: a process saving a model over and over is killed at random moments; a complete copy always loads."
    import os, random, signal
    from miniai.store import load_model
    torch.manual_seed(0)
    path = save_model(UNet(), tmp_path/'model.pt')
    rng = random.Random(0)
    for _ in range(8):
        child = fork.Process(target=_save_forever, args=(path,)); child.start()
        time.sleep(rng.uniform(0.05, 0.5))
        os.kill(child.pid, signal.SIGKILL); child.join()
        load_model(UNet(), path)
    save_model(UNet(), path)
    assert [p.name for p in tmp_path.iterdir()] == ['model.pt']   # the next save removed what the killed ones left

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
