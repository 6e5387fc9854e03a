"""Device, weights and GPU memory: which device a run trains on, what YOLO() loads (never downloaded during a
run), and peak memory as nvidia-smi shows it."""

import hashlib
import os
from pathlib import Path

from harness import common
from harness.common import HarnessError, banner

# every checkpoint the supervisor validated, one a line
TRAINED_DIGESTS = common.CACHE_DIR / "trained-weights.txt"


def resolve_weights(name, dataset=None):
    """(what YOLO() loads, how the summary describes it). Never downloads during a run: a missing .pt falls
    back to the matching .yaml, trained from scratch, with a loud warning. A .pt this harness trained is
    refused."""
    if name.endswith(".yaml"):
        return name, f"{name} (from scratch)"
    from ultralytics.utils import SETTINGS
    for path in (Path(name), common.WEIGHTS_DIR / name, Path(SETTINGS["weights_dir"]) / name):
        if path.is_file():
            if why := earlier_run(path, dataset):
                raise HarnessError(f"MODEL = {name!r} in train.py: {path} was trained by this harness "
                                   f"({why}); weights from earlier runs are refused, "
                                   "each experiment is one budget of training "
                                   "from released weights or from scratch: use weights/ or a .yaml")
            data = read_checkpoint(path)[0]
            return str(path), f"{name} (pretrained{f' on {Path(data).name}' if data else ''})"
    scratch = Path(name).with_suffix(".yaml").name
    banner(f"{name} not found in weights/ (offline): training {scratch} from scratch. "
           f"To use pretrained weights, run `uv run prepare.py --weights {name}` once with internet "
           "access, or copy the file into weights/.")
    return scratch, f"{scratch} (from scratch: {name} not found)"


def read_checkpoint(path):
    """(the dataset YAML its train_args name or '', the digest of its weights or '') of an Ultralytics
    checkpoint, from one load; ('', '') for a file that holds none (YOLO() says what is wrong with it).
    The digest is over every tensor's name and value in half precision of what YOLO() would load (its EMA,
    else its model): unchanged by edited metadata or a float32 copy."""
    from ultralytics.utils.patches import torch_load
    try:
        ckpt = torch_load(path, map_location="cpu", weights_only=False)
        state = (ckpt.get("ema") or ckpt.get("model")).state_dict()
    except Exception:
        return "", ""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().half() if tensor.is_floating_point() else tensor.detach()
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return str((ckpt.get("train_args") or {}).get("data") or ""), digest.hexdigest()


def weights_digest(path):
    """read_checkpoint's digest of the weights at `path` ('' for a file that holds no model)."""
    return read_checkpoint(path)[1]


def record_validated(paths):
    """Add the digests of the checkpoints at `paths` (those that exist) to TRAINED_DIGESTS."""
    add_trained_digests({d for d in (weights_digest(p) for p in paths if Path(p).is_file()) if d})


def add_trained_digests(new):
    """Append the digests TRAINED_DIGESTS lacks, in one write: runs that end at once (the queue's, a second
    agent's) each keep theirs."""
    TRAINED_DIGESTS.parent.mkdir(parents=True, exist_ok=True)
    with open(TRAINED_DIGESTS, "a+") as f:
        f.seek(0)
        f.write("".join(f"{d}\n" for d in sorted(set(new) - set(f.read().split()))))


def earlier_run(path, dataset=None):
    """Why the checkpoint at `path` comes from an earlier run of this harness, or '' (released weights): by
    what it says it was trained on, or by its weights' digest being in TRAINED_DIGESTS."""
    data, digest = read_checkpoint(path)
    if why := trained_here(data, dataset):
        return why
    if digest and TRAINED_DIGESTS.is_file() and digest in TRAINED_DIGESTS.read_text().split():
        return "the same weights as a checkpoint an earlier run trained, whatever its metadata says"
    return ""


def trained_here(data, dataset=None):
    """Why a checkpoint trained on `data` comes from this harness (a run folder, the stand-in, the dataset),
    or ''."""
    if not data:
        return ""
    path = Path(data)
    if path.name == "data.yaml" and path.parent.name == common.RUN_DIR.name:
        return f"on {data}, a run folder's dataset"
    if data.startswith(str(common.CACHE_DIR)) or path.parent.name.startswith("synthetic-"):
        return f"on {data}, the stand-in"
    if dataset and path.resolve() == Path(dataset).resolve():
        return f"on {data}, this dataset"
    return ""


def download_weights(name):
    """One-time fetch of Ultralytics' released weights into weights/ (prep step, needs internet)."""
    os.environ.pop("YOLO_OFFLINE")
    from ultralytics.utils.downloads import attempt_download_asset
    common.WEIGHTS_DIR.mkdir(exist_ok=True)
    target = common.WEIGHTS_DIR / name
    try:
        attempt_download_asset(target)
    except Exception as e:
        raise HarnessError(f"could not download {name} ({type(e).__name__}); "
                           f"copy the file into {common.WEIGHTS_DIR}/ by hand")
    if not target.is_file():
        raise HarnessError(f"{name} is not among Ultralytics' released weights; "
                           f"copy it into {common.WEIGHTS_DIR}/")
    print(f"saved {target}")


def pick_device(request=None):
    """(device for Ultralytics, description) for train.py's DEVICE: None is CUDA device 0, else the CPU
    (start() warns loudly); an index is that GPU; a list of indices is one run over those GPUs (DDP).
    A request this machine cannot meet fails here, before any GPU time is spent."""
    import torch
    if request == "cpu":
        return "cpu", "cpu"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if request is None:
        return (0, f"cuda:0 {torch.cuda.get_device_name(0)}") if gpus else ("cpu", "cpu")
    ids = [request] if isinstance(request, int) else request
    if (not isinstance(ids, (list, tuple)) or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
        raise HarnessError(f"DEVICE = {request!r} in train.py: use None (GPU 0), a GPU index (1) or a list "
                           "of GPU indices ([0, 1]: one run over several GPUs)")
    if len(set(ids)) != len(ids):
        raise HarnessError(f"DEVICE = {request!r} in train.py names a GPU twice; list each GPU once")
    missing = [i for i in ids if i >= gpus]
    if missing:
        have = (f"{gpus} GPU{'s' if gpus != 1 else ''} ({', '.join(map(str, range(gpus)))})" if gpus
                else "no CUDA GPU")
        raise HarnessError(f"DEVICE = {request!r} in train.py: GPU {missing[0]} does not exist, "
                           f"this machine has {have}; set DEVICE = None or list GPUs that exist")
    names = [torch.cuda.get_device_name(i) for i in ids]
    name = names[0] if len(set(names)) == 1 else " + ".join(names)
    if len(ids) == 1:
        return ids[0], f"cuda:{ids[0]} {name}"
    return list(ids), f"cuda:{','.join(map(str, ids))} {len(ids)} x {name}"


def gpu_neighbours(device):
    """['GPU i: pid P (command line) holds N MB'] for each other process that holds memory on the GPUs that
    train.py's DEVICE names (None: GPU 0; an index; a list; anything else: every GPU), as NVML lists them, in
    CUDA's numbering; [] without NVML or without a GPU."""
    if device == "cpu":
        return []
    try:
        import pynvml
        pynvml.nvmlInit()
        handles = visible_gpus(pynvml)
    except Exception:  # no driver, no NVML: nothing to name
        return []
    wanted = ([0] if device is None else [device] if isinstance(device, int)
              else device if isinstance(device, list) else range(len(handles)))
    rows = []
    for i in (i for i in wanted if isinstance(i, int) and 0 <= i < len(handles)):
        try:
            processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handles[i])
        except pynvml.NVMLError:
            continue
        rows += [f"GPU {i}: pid {p.pid} ({common.command_line(p.pid)}) holds "
                 f"{(p.usedGpuMemory or 0) / 2**20:,.0f} MB" for p in processes if p.pid != os.getpid()]
    return rows


def ask_gpu_neighbours(device):
    """gpu_neighbours(device) in a thread of its own (NVML's start overlaps the dataset checks); returns its
    Future."""
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(1)
    future = pool.submit(gpu_neighbours, device)
    pool.shutdown(wait=False)  # its thread ends with its one task
    return future


def name_gpu_neighbours(rows):
    """Name in the log each other process that holds memory on the run's GPUs (gpu_neighbours' rows): two
    agents sharing a card by mistake, or a process an earlier run left."""
    for row in rows:
        print(f"supervisor: another process holds memory on this run's GPU, {row}: the card is shared, so "
              "this run's speed and peak memory are not its own")


def visible_gpus(pynvml):
    """NVML's handles of the GPUs CUDA shows this process, in CUDA's order (CUDA_VISIBLE_DEVICES: indices or
    UUIDs)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    handles = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry:
            break
        handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(entry)) if entry.isdigit()
                       else pynvml.nvmlDeviceGetHandleByUUID(entry))
    return handles


def process_gpu_mb(index, pid=None):
    """What NVML says a process (this one by default) holds on GPU `index`, in MB, as nvidia-smi shows it;
    None where NVML cannot tell (no NVML, or another PID namespace)."""
    try:
        import pynvml
        import torch
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(index).uuid}")
        used = {p.pid: p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
        return (used.get(pid or os.getpid()) or 0) / 2**20
    except Exception:
        return None


def peak_vram_mb(device):
    """The most memory this process held on GPU `device` (an index), as nvidia-smi would show it for the
    process: PyTorch's peak reserved memory plus what the process holds outside PyTorch (CUDA context,
    libraries), read from NVML once at the end. 0.0 on CPU."""
    if device == "cpu":
        return 0.0
    import torch
    peak = torch.cuda.max_memory_reserved(device) / 2**20
    used = process_gpu_mb(device)
    if used:  # without NVML: PyTorch's own figure alone
        peak += max(used - torch.cuda.memory_reserved(device) / 2**20, 0)
    return peak
