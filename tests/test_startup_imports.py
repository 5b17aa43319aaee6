"""What a process loads to get its first faces: `import fastmtcnn`, a CPU detection, and `fastmtcnn detect`/`video`.

Why (issue #18, fast start): slow optional imports (torch, torchvision,
PyNvVideoCodec, pyarrow, ray, ...) must happen only where they are used, and
the command line must pay no more than the API for the same job: `fastmtcnn
COMMAND` imports that command's module, not every command's. Each case runs
in a fresh interpreter, which reports its `sys.modules`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

#: optional packages no CPU detection needs (extras: gpu, nvdec, batch, ray, plot, supervision)
OPTIONAL = ("torch", "torchvision", "PyNvVideoCodec", "pyarrow", "ray", "matplotlib", "supervision")
PORTRAIT = "matplotlib_grace_hopper.jpg"
CLIP = "video/group_720p_h264.mp4"

#: what the command line may load beyond the API's modules: its own code, argparse and its progress bars
CLI_OWN = ("fastmtcnn", "argparse", "tqdm")


def loaded(code: str) -> dict[str, set[str]]:
    """Run `code` in a fresh interpreter; it calls `mark(name)` to record sys.modules at that point."""
    prelude = ("import json, sys\n_marks = {}\n"
               "def mark(name):\n    _marks[name] = sorted(sys.modules)\n")
    coda = "\nprint(json.dumps(_marks), file=sys.stderr)\n"
    p = subprocess.run([sys.executable, "-c", prelude + code + coda], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return {k: set(v) for k, v in json.loads(p.stderr.strip().splitlines()[-1]).items()}


def top(modules: set[str]) -> set[str]:
    return {m.partition(".")[0] for m in modules}


@pytest.mark.parametrize("backend, other", [("openvino", "onnxruntime"), ("onnxruntime", "openvino")])
def test_import_and_a_cpu_detection_load_no_optional_package(shared_data, backend, other):
    pytest.importorskip(backend)
    marks = loaded(f"import fastmtcnn\nmark('import')\n"
                   f"faces = fastmtcnn.MTCNN(backend={backend!r}).detect({str(shared_data / PORTRAIT)!r})\n"
                   "assert len(faces) == 1, len(faces)\nmark('detect')\n")
    assert not top(marks["import"]) & {*OPTIONAL, "openvino", "onnxruntime"}  # engines load with a detector
    assert backend in top(marks["detect"])  # the run really detected with it
    assert not top(marks["detect"]) & {*OPTIONAL, other}


def _extra_third_party(cli: set[str], api: set[str]) -> set[str]:
    """Top-level packages the CLI loaded and the API did not, other than its own and the standard library."""
    return {m for m in top(cli - api)
            if m not in CLI_OWN and m not in sys.stdlib_module_names and not m.startswith("__")}  # __mp_main__


@pytest.mark.parametrize("flags", [[], ["--backend", "onnxruntime"]], ids=["openvino", "onnxruntime"])
def test_fastmtcnn_detect_loads_no_more_than_the_api_for_the_same_job(shared_data, flags):
    photo = str(shared_data / PORTRAIT)
    backend = flags[1] if flags else None
    cli = loaded(f"from fastmtcnn.cli import main\nassert main(['detect', {photo!r}, '-q', *{flags!r}]) == 0\n"
                 "mark('cli')\n")["cli"]
    api = loaded(f"from fastmtcnn import MTCNN\nassert len(MTCNN(backend={backend!r}).detect({photo!r})) == 1\n"
                 "mark('api')\n")["api"]
    assert _extra_third_party(cli, api) == set()
    assert not top(cli) & set(OPTIONAL)
    commands = {m for m in cli if m.startswith("fastmtcnn.commands.")}
    assert commands == {"fastmtcnn.commands.detect"}  # not video, batch, tune, ... too


def test_fastmtcnn_video_loads_no_more_than_the_api_for_the_same_job(shared_data):
    clip = str(shared_data / CLIP)
    cli = loaded(f"from fastmtcnn.cli import main\n"
                 f"assert main(['video', {clip!r}, '-q', '--max-frames', '2']) == 0\nmark('cli')\n")["cli"]
    api = loaded(f"from fastmtcnn import MTCNN, StreamDetector\n"
                 f"with StreamDetector(MTCNN(), [{clip!r}], max_frames=2) as streams:\n"
                 "    assert len(list(streams)) == 2\nmark('api')\n")["api"]
    assert _extra_third_party(cli, api) == set()
    assert not top(cli) & set(OPTIONAL)
    assert {m for m in cli if m.startswith("fastmtcnn.commands.")} == {"fastmtcnn.commands.video"}


def test_help_lists_every_command_without_importing_one():
    marks = loaded("from fastmtcnn.cli import COMMANDS, main\n"
                   "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\nmark('help')\n")
    assert not {m for m in marks["help"] if m.startswith("fastmtcnn.commands.")}
    p = subprocess.run([sys.executable, "-m", "fastmtcnn", "--help"], capture_output=True, text=True, timeout=120)
    from fastmtcnn.cli import COMMANDS

    listed = " ".join(p.stdout.split())
    for name, (_, summary) in COMMANDS.items():
        assert f"{name} {summary}" in listed  # each command with its one-line help


def test_import_help_and_a_bad_flag_load_neither_opencv_nor_numpy():
    """`import fastmtcnn` names its API lazily: a typo'd flag or --help answers without OpenCV's import
    (measured on 2 cores: `fastmtcnn --help` 45 ms instead of 160)."""
    marks = loaded("import fastmtcnn\nmark('import')\nfrom fastmtcnn.cli import main\n"
                   "for argv in (['--help'], ['detect', 'x.jpg', '--no-such-flag']):\n"
                   "    try:\n        main(argv)\n    except SystemExit:\n        pass\nmark('cli')\n"
                   "from fastmtcnn import MTCNN, Detections, read_image\nmark('api')\n")
    for name in ("import", "cli"):
        assert not top(marks[name]) & {"cv2", "numpy"}, name
    assert {"cv2", "numpy"} <= top(marks["api"])  # the names still come, on first use
    import fastmtcnn

    assert set(fastmtcnn.__all__) <= set(dir(fastmtcnn))
    assert all(getattr(fastmtcnn, name) is not None for name in fastmtcnn.__all__)  # each one resolves
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        fastmtcnn.Nope  # noqa: B018


def test_a_torch_detection_imports_triton_only_for_its_kernels(shared_data):
    """Issue #18: importing Triton parses every kernel's source (0.37 s of a fresh GPU process's 2.1 s to its
    first result, H200 cProfile); a first result runs torch ops, and the CPU never runs the kernels. So the
    torch backend imports Triton only when its kernels warm up (GPU test below: not for a first result)."""
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    marks = loaded("import torch\nmark('torch')\nimport fastmtcnn\n"
                   f"faces = fastmtcnn.MTCNN(backend='torch', device='cpu').detect({str(shared_data / PORTRAIT)!r})\n"
                   "assert len(faces) == 1, len(faces)\nmark('detect')\n")
    assert "triton" not in top(marks["detect"] - marks["torch"])


@pytest.mark.gpu
def test_gpu_detection_imports_no_dynamo_sympy_or_distributed_beyond_torch(shared_data):
    """Issue #18: a CUDA detection, and the Triton kernels compiled after it, load none of torch._dynamo,
    sympy and torch.distributed that `import torch` itself did not (those cost seconds of Python compiling
    on a fresh machine). What `import torch` loads is not ours to change, so it is the baseline."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    heavy = ("torch._dynamo", "sympy", "torch.distributed", "torch._inductor",
             "torch._higher_order_ops.triton_kernel_wrap")
    marks = loaded("import torch\nmark('torch')\nimport fastmtcnn\n"
                   f"det = fastmtcnn.MTCNN(device='cuda')\nfaces = det.detect({str(shared_data / PORTRAIT)!r})\n"
                   "assert len(faces) == 1, len(faces)\nmark('first')\n"
                   "det.backend.wait_for_kernels(300)\n"
                   f"for _ in range(3):\n    det.detect({str(shared_data / PORTRAIT)!r})\nmark('kernels')\n")
    for when in ("first", "kernels"):
        new = marks[when] - marks["torch"]
        assert not {m for m in new if m.partition(".")[0] == "sympy" or m.startswith(heavy)}, when
    assert "triton" not in top(marks["first"] - marks["torch"])  # a first result runs torch ops
    assert "triton" in top(marks["kernels"])  # the kernels really warmed up


@pytest.mark.gpu
def test_gpu_a_short_script_ends_cleanly_while_the_kernels_still_compile(shared_data, tmp_path):
    """A script that detects a photo twice (the second call starts the kernel warm-up) and ends at once,
    with an empty Triton cache (the kernels then compile for seconds), exits 0 with no compiler or C++
    runtime noise: the warm-up stops waiting at exit. It aborted before (SIGABRT, "terminate called
    without an active exception" on an H100)."""
    import os

    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    code = (f"import fastmtcnn\ndet = fastmtcnn.MTCNN(device='cuda')\ndet.detect({str(shared_data / PORTRAIT)!r})\n"
            f"print(len(det.detect({str(shared_data / PORTRAIT)!r})))")
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "triton"), "FASTMTCNN_CACHE_DIR": str(tmp_path / "fm")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["1"]
    assert not any(s in p.stderr for s in ("terminate called", "fatal error", "ld returned")), p.stderr[-3000:]
    # the kernels' own compile process outlived the script and fills Triton's cache: the next process loads them
    deadline = time.monotonic() + 240
    while not list((tmp_path / "fm" / "triton").glob("kernels-*[!k]")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list((tmp_path / "fm" / "triton").glob("kernels-*[!k]")), "no compile process filled the cache"


@pytest.mark.gpu
def test_gpu_a_folder_job_waits_for_cached_kernels_only_when_an_earlier_process_compiled_them(shared_data,
                                                                                               tmp_path):
    """Issue #17: a folder job whose Triton kernels an earlier process compiled on this machine waits for
    them (they load from Triton's cache) before its first window, so its first pass runs at the warm rate;
    with no such process before it, its first window runs at once on torch ops, as before."""
    import os

    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    photos = sorted(str(p) for p in shared_data.glob("*.jpg"))
    assert len(photos) > 9
    code = ("import json, sys\nimport fastmtcnn.photos as ph\nfrom fastmtcnn import MTCNN\n"
            "det = MTCNN(device='cuda')\nseen = []\nsw = ph.submit_window\n"
            "def spy(d, images, queue=True):\n    seen.append(det.backend._compiled)\n    return sw(d, images, queue)\n"
            "ph.submit_window = spy\ncached = det.backend.kernels_cached()\n"
            f"n = sum(r.ok for r in ph.detect_photos(det, {photos!r}))\n"
            "ready = det.backend.wait_for_kernels(300)\n"
            "print(json.dumps([cached, seen[0], n, ready, det.backend.kernels_cached()]))\n")
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "triton"), "FASTMTCNN_CACHE_DIR": str(tmp_path / "fm")}

    def run() -> list:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=400, env=env)
        assert p.returncode == 0, p.stderr[-3000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    assert run() == [False, False, len(photos), True, True]  # compiled aside; noted once in use
    assert run() == [True, True, len(photos), True, True]  # loaded from the cache before the first window
