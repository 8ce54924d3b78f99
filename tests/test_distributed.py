"""Data parallelism (miniai.distributed): 2 processes equal 1 on the same global batch, metrics count the dataset once,
a failing or stalled rank fails the launch quickly with its own error, and a world of the wrong size is refused.
Every test runs under a time limit (SIGALRM), so a hung process group fails the test instead of hanging the suite."""
import os, re, signal, subprocess, sys, textwrap, time
from contextlib import contextmanager, redirect_stdout
from functools import partial
from pathlib import Path
import io
import pytest, torch
import torch._dynamo   # imported here once: the first optimiser imports it, and each forked rank would import it again
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from miniai.conv import simple_cnn
from miniai.datasets import DataLoaders
from miniai.learner import Callback, CancelFitException, Learner, TrainCB
from miniai.metrics import Accuracy, MetricsCB
from miniai.distributed import AccelerateCB, check_world_size, free_port, launch

@contextmanager
def time_limit(secs):
    "Raise TimeoutError in this process if the block runs longer than `secs` seconds."
    def handler(signum, frame): raise TimeoutError(f'took more than {secs} s')
    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(secs)
    try: yield
    finally: signal.alarm(0); signal.signal(signal.SIGALRM, old)

g = torch.Generator().manual_seed(0)
Y = torch.randint(0, 10, (1280 + 999,), generator=g)
X = torch.randn(len(Y), 1, 28, 28, generator=g) * 0.5
X[torch.arange(len(Y)), 0, Y, Y] += 3.   # a learnable signal: pixel (y, y) is bright
x_train, y_train, x_valid, y_valid = X[:1280], Y[:1280], X[1280:], Y[1280:]

def make_dls(bs=64, n_valid=999):
    return DataLoaders(DataLoader(TensorDataset(x_train, y_train), bs, shuffle=True, generator=torch.Generator().manual_seed(1)),
                       DataLoader(TensorDataset(x_valid[:n_valid], y_valid[:n_valid]), 2 * bs))

class StopAfter(Callback):
    order = 10
    def __init__(self, steps): self.steps, self.n = steps, 0
    def after_batch(self, learn):
        if learn.training: self.n += 1
        if self.n == self.steps: raise CancelFitException()

def train(cb, steps=20, valid=False, n_valid=999):
    "Train a fresh CNN with `cb` for `steps` batches (then validate if `valid`); the weights and the validation accuracy and count."
    torch.manual_seed(0)
    metrics = MetricsCB(Accuracy())
    learn = Learner(simple_cnn(), make_dls(n_valid=n_valid), F.cross_entropy, lr=0.1, cbs=[cb, metrics],
                    opt_func=partial(torch.optim.SGD, momentum=0.9))
    with redirect_stdout(io.StringIO()):
        if steps: learn.fit(1, valid=False, cbs=[StopAfter(steps)])
        if valid: learn.fit(1, train=False)
    acc = metrics.metrics['accuracy']
    return learn.model.state_dict(), (float(acc.compute()), acc.count) if valid else None

def max_diff(a, b): return max((a[k].float() - b[k].float()).abs().max().item() for k in a)

def test_two_processes_equal_one():
    with time_limit(50):
        one, _ = launch(train, (TrainCB(),), n_procs=1)
        two, _ = launch(train, (AccelerateCB(n_procs=2),), n_procs=2)
        whole, _ = launch(train, (AccelerateCB(n_procs=2, split_batches=False),), n_procs=2)
    assert max_diff(one, two) < 1e-6
    assert max_diff(one, whole) > 1e-3   # a batch of 64 per process (global 128) is a different training: the check can fail

def test_metrics_count_the_dataset_once():
    with time_limit(40):
        _, (acc1, n1) = launch(train, (TrainCB(), 0, True), n_procs=1)
        _, (acc2, n2) = launch(train, (AccelerateCB(n_procs=2), 0, True), n_procs=2)
    assert n1 == n2 == 999    # 999 = 7 x 128 + 103: the last batch is filled up to 128 (64 per process) from the start, the 25 duplicates dropped
    assert abs(acc1 - acc2) < 1e-6

def rank1_raises():
    dist.all_reduce(torch.ones(1))
    if dist.get_rank() == 1: raise ValueError('rank 1 broke')
    dist.all_reduce(torch.ones(1))
    time.sleep(30)

def test_raising_rank_surfaces_its_own_exception():
    start = time.monotonic()
    with time_limit(20), pytest.raises(ValueError, match='rank 1 broke') as info: launch(rank1_raises)
    assert time.monotonic() - start < 10
    assert 'rank1_raises' in info.value.__cause__.tb

def rank1_stalls():
    if dist.get_rank() == 1: time.sleep(120)
    dist.all_reduce(torch.ones(1))

def test_stalled_rank_fails_within_the_timeout():
    start = time.monotonic()
    with time_limit(30), pytest.raises(TimeoutError, match='rank 0 of 2 waited more than timeout=2'): launch(rank1_stalls, timeout=2)
    assert 2 <= time.monotonic() - start < 12

def test_world_size_check():
    check_world_size(2, 2); check_world_size(None, 1)
    with pytest.raises(RuntimeError, match='world of 1'): check_world_size(2, 1)
    with time_limit(30), pytest.raises(RuntimeError, match='asked for 2 processes, but this one is in a world of 1'):
        launch(train, (AccelerateCB(n_procs=2), 1), n_procs=1)

def test_launch_returns_rank0_and_checks_arguments():
    def ranks():
        t = torch.tensor([dist.get_rank() + 1]); dist.all_reduce(t)
        return dist.get_rank(), t.item(), torch.get_num_threads()
    with time_limit(30): assert launch(ranks) == (0, 3, 1)
    with pytest.raises(ValueError, match='at least 1'): launch(ranks, n_procs=0)
    assert 1024 < free_port() < 65536

SCRIPT = textwrap.dedent('''
    import torch
    from miniai.learner import Learner
    from miniai.distributed import AccelerateCB
    from torch.utils.data import DataLoader, TensorDataset
    from miniai.datasets import DataLoaders
    ds = TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    learn = Learner(torch.nn.Linear(3, 2), DataLoaders(DataLoader(ds, 4), DataLoader(ds, 4)), cbs=[AccelerateCB(n_procs=2)])
    learn.fit(1)
''')

def test_accelerate_launch_cpu_starts_one_process_and_is_refused(tmp_path):
    "`accelerate launch --cpu --num_processes 2` starts one process: AccelerateCB(n_procs=2) refuses to train alone."
    (tmp_path/'train.py').write_text(SCRIPT)
    accelerate = os.path.join(os.path.dirname(sys.executable), 'accelerate')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MASTER_PORT': str(free_port())}
    r = subprocess.run([accelerate, 'launch', '--cpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
                        '--dynamo_backend', 'no', str(tmp_path/'train.py')], capture_output=True, text=True, timeout=50, env=env, cwd=tmp_path)
    assert r.returncode != 0
    assert 'asked for 2 processes, but this one is in a world of 1' in r.stderr, r.stderr[-2000:]

@pytest.mark.parametrize('code', [0, 3, 'bye'])
def test_sys_exit_in_a_rank_is_an_error_not_the_end_of_the_caller(code):
    "sys.exit in a process of `launch` used to be re-raised as SystemExit: the calling program ended, silently with status 0."
    def leaves(): sys.exit(code)
    with pytest.raises(RuntimeError, match=rf'rank 0 of 1 called sys.exit\({code!r}\)'): launch(leaves, n_procs=1)

def test_accelerate_save_never_leaves_half_a_file(tmp_path, monkeypatch):
    "AccelerateCB.save that dies while writing keeps the last good checkpoint (it used to torch.save in place)."
    from types import SimpleNamespace
    from miniai.distributed import AccelerateCB
    from miniai.store import load_model
    cb, model = AccelerateCB(), simple_cnn()
    cb.acc = SimpleNamespace(wait_for_everyone=lambda: None, is_main_process=True, unwrap_model=lambda m: m)
    learn, path = SimpleNamespace(model=model), tmp_path/'model.pt'
    cb.save(learn, path)
    good = path.read_bytes()
    real_save = torch.save
    def dies_halfway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if hasattr(f, 'truncate'): f.truncate(100)
        else: Path(f).write_bytes(Path(f).read_bytes()[:100])
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, 'save', dies_halfway)
    with pytest.raises(KeyboardInterrupt): cb.save(SimpleNamespace(model=simple_cnn()), path)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ['model.pt']
    monkeypatch.setattr(torch, 'save', real_save)
    load_model(simple_cnn(), path)

class TwoArgs(Exception):
    "An exception pickle can write but not rebuild: its __init__ needs two arguments, its args hold one."
    def __init__(self, a, b): super().__init__(f'{a} met {b}')

def raises_two_args(): raise TwoArgs('rank', 'trouble')

def raises_signal_exception():
    from torch.distributed.elastic.multiprocessing.api import SignalException
    raise SignalException('Process 7 got signal: 15', sigval=signal.SIGTERM)

@pytest.mark.parametrize('fn, text', [(raises_two_args, 'TwoArgs: rank met trouble'),
                                      (raises_signal_exception, 'SignalException: Process 7 got signal: 15')])
def test_an_exception_that_cannot_be_rebuilt_keeps_its_text(fn, text):
    "It used to surface as the TypeError of rebuilding it (`__init__() missing 'b'`, `missing 'sigval'`)."
    with time_limit(30), pytest.raises(RuntimeError, match=text) as info: launch(fn, n_procs=1)
    assert fn.__name__ in info.value.__cause__.tb

def sleeps_in_every_rank(): time.sleep(30)

def test_ctrl_c_on_the_caller_stops_the_ranks():
    "Ctrl-C in the calling process raises KeyboardInterrupt there at once and stops every rank."
    import threading
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    with time_limit(30), pytest.raises(KeyboardInterrupt): launch(sleeps_in_every_rank, timeout=60)
    assert time.monotonic() - start < 10
    assert not [c for c in __import__('multiprocessing').active_children()]

def rank1_hangs_outside_a_collective():
    dist.all_reduce(torch.ones(1))
    if dist.get_rank() == 1: time.sleep(120)   # no collective waits for it: gloo's timeout never fires
    return 'rank 0 is done'

def test_a_rank_hung_outside_a_collective_is_stopped():
    "Rank 0 finished, rank 1 slept on: `launch(timeout=2)` used to wait for ever."
    start = time.monotonic()
    with time_limit(40), pytest.raises(TimeoutError, match=r'rank 1 of 2 was still running 2 s after the first rank'):
        launch(rank1_hangs_outside_a_collective, timeout=2)
    assert time.monotonic() - start < 15

def rank1_dies(how):
    dist.all_reduce(torch.ones(1))
    if dist.get_rank() == 1:
        if how == 'exit': os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(torch.ones(1))   # rank 0 waits here for a rank that is gone

@pytest.mark.parametrize('how, said', [('exit', 'exit code 3'), ('kill', 'signal SIGKILL')])
def test_a_dead_rank_is_named_not_the_survivor(how, said):
    "The survivor's 'Connection closed by peer' used to be reported, as raised in rank 0."
    with time_limit(40), pytest.raises(RuntimeError, match=f'rank 1 of 2 died .*{said}'):
        launch(rank1_dies, (how,), timeout=10)

@pytest.mark.parametrize('kwargs, error, text', [
    (dict(timeout=-1), ValueError, 'timeout must be a positive number of seconds, got -1'),
    (dict(timeout=True), TypeError, 'timeout must be a positive number of seconds, got True'),
    (dict(n_procs=None), TypeError, 'n_procs must be a whole number of processes, got None'),
    (dict(n_procs=2.0), TypeError, 'n_procs must be a whole number of processes, got 2.0'),
    (dict(n_procs=0), ValueError, 'n_procs must be at least 1, got 0')])
def test_launch_refuses_bad_arguments_before_forking(kwargs, error, text):
    with time_limit(10), pytest.raises(error, match=re.escape(text)): launch(sleeps_in_every_rank, **kwargs)

def _save_forever(path, models):
    "Child: save each of `models` in turn to `path` with AccelerateCB.save on a slow disk, for ever (until killed)."
    from types import SimpleNamespace
    torch.set_num_threads(1)
    real_save = torch.save
    def slow_save(obj, f, *args, **kwargs):   # a slow disk: the kill lands mid-write most times
        buf = io.BytesIO(); real_save(obj, buf, *args, **kwargs)
        for i in range(0, len(buf.getvalue()), 4096): f.write(buf.getvalue()[i:i + 4096]); time.sleep(0.001)
    torch.save = slow_save
    cb = AccelerateCB()
    cb.acc = SimpleNamespace(wait_for_everyone=lambda: None, is_main_process=True, unwrap_model=lambda m: m)
    while True:
        for m in models: cb.save(SimpleNamespace(model=m), path)

def test_kill_during_accelerate_save_always_leaves_a_complete_checkpoint(tmp_path):
    "kill -9 during AccelerateCB.save, five times: the file always loads as one whole model, and no .part outlives the next save."
    import multiprocessing, random
    from types import SimpleNamespace
    from miniai.store import load_model
    models = [simple_cnn() for _ in range(2)]
    path, rng, mid_write = tmp_path/'model.pt', random.Random(0), 0
    for _ in range(5):
        p = multiprocessing.get_context('fork').Process(target=_save_forever, args=(path, models))
        p.start(); time.sleep(rng.uniform(0.3, 0.6)); os.kill(p.pid, signal.SIGKILL); p.join()
        assert p.exitcode == -signal.SIGKILL
        mid_write += any(f.name.endswith('.part') for f in tmp_path.iterdir())
        state = load_model(simple_cnn(), path).state_dict()
        assert any(max_diff(state, m.state_dict()) == 0 for m in models)   # one of the two, whole
        cb = AccelerateCB()
        cb.acc = SimpleNamespace(wait_for_everyone=lambda: None, is_main_process=True, unwrap_model=lambda m: m)
        cb.save(SimpleNamespace(model=models[0]), path)
        assert [f.name for f in tmp_path.iterdir()] == ['model.pt']
    assert mid_write >= 3, mid_write   # most kills hit a write in progress
