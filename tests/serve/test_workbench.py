"""Training from the browser (`lmtune serve --workbench`), without weakening what the CLI guarantees: paths
confined below the server's folders, uploads sanitized and capped, the training routes absent unless asked
for, no workbench on a non-loopback address without a key; the queue runs ordinary `lmtune train` processes,
one at a time, stopped as Ctrl-C stops them and resumed exactly."""

import time

import httpx
import pytest

from lmtune.errors import LmtuneError
from lmtune.serve.workbench import Workbench, sanitized
from tests.conftest import make_story
from tests.serve.conftest import app_in_thread


@pytest.fixture
def folders(tmp_path):
    data, runs, outside = tmp_path / "data", tmp_path / "runs", tmp_path / "outside"
    for folder in (data, runs, outside):
        folder.mkdir()
    (data / "book.txt").write_text(make_story(1, 80))
    (outside / "secret.txt").write_text("not yours")
    (data / "escape").symlink_to(outside)
    (data / "secret-link.txt").symlink_to(outside / "secret.txt")
    return data, runs, outside


def test_paths_are_confined_below_the_servers_folders(folders):
    data, runs, outside = folders
    bench = Workbench(data, runs)
    assert bench.confined("book.txt") == (data / "book.txt").resolve()
    for given in (
        "../outside/secret.txt",
        str(outside / "secret.txt"),
        "escape/secret.txt",
        "secret-link.txt",
        "/etc/passwd",
        "book.txt/../../outside",
    ):
        with pytest.raises(LmtuneError, match="outside the server's data folder"):
            bench.confined(given)
    with pytest.raises(LmtuneError, match="outside the server's runs folder"):
        bench.confined("../data", under="runs")
    assert "book.txt" in bench.data_choices()


def test_uploads_are_sanitized_capped_and_kept_in_the_servers_folder(folders, tmp_path):
    data, runs, _ = folders
    upload = tmp_path / "incoming"
    upload.write_text("some text " * 100)
    bench = Workbench(data, runs, max_upload_mb=0.0005)  # ~500 bytes
    with pytest.raises(LmtuneError, match="more than this server takes"):
        bench.save_upload(upload, "big.txt")
    bench = Workbench(data, runs)
    saved = bench.save_upload(upload, "../../evil name .txt")
    assert saved.parent == data.resolve() / "uploads" and saved.name == "evil_name_.txt"
    assert bench.save_upload(upload, "../../evil name .txt") == saved  # the same file again: one copy
    upload.write_text("other text")
    assert bench.save_upload(upload, "../../evil name .txt").name == "evil_name_-2.txt"  # never overwritten
    assert saved.read_text() == "some text " * 100
    assert sanitized("..\\..\\.hidden") == "hidden"


def test_the_training_routes_are_there_only_with_the_flag(tiny_clm_run, folders):
    from lmtune.serve.app import create_app

    data, runs, _ = folders
    with app_in_thread(create_app([tiny_clm_run])) as url:
        plain = httpx.get(url + "/gradio_api/info").json()["named_endpoints"]
    with app_in_thread(create_app([], workbench=Workbench(data, runs))) as url:
        training = httpx.get(url + "/gradio_api/info").json()["named_endpoints"]
    assert not [name for name in plain if name.startswith("/train")]
    assert {"/train_start", "/train_stop", "/train_resume", "/train_load"} <= set(training)


def test_no_workbench_on_the_network_without_a_key(cli, tmp_path):
    result = cli("serve", "--workbench", "--host", "0.0.0.0", "--data-dir", tmp_path)
    assert result.returncode == 1 and len(result.error_lines) == 1
    assert "not loopback" in result.error_lines[0] and "--api-key" in result.error_lines[0]
    result = cli("serve", "--port", "1")
    assert result.returncode == 1 and "--workbench" in result.error_lines[0]  # no model, no workbench


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.2)


def test_the_queue_trains_one_at_a_time_stops_like_ctrl_c_and_resumes(folders):
    data, runs, _ = folders
    bench = Workbench(data, runs)
    options = [
        "--model",
        "gpt-tiny",
        "--minutes",
        "5",
        "--train.lr",
        "3e-3",
        "--eval.reference",
        "null",
        "--train.save_every",
        "2",
        "--train.max_steps",
        "4000",
        "--train.epochs",
        "1000",
    ]
    first = bench.submit_training([data / "book.txt"], options, "book")
    second = bench.submit_training([data / "book.txt"], [*options[:-4], "--train.max_steps", "6"], "book")
    assert second.run_dir.name == "book-2"
    wait_for(lambda: first.state == "running" and (first.run_dir / "metrics.jsonl").exists(), 120, "first started")
    assert second.state == "waiting"  # one training at a time
    wait_for(lambda: any(r[3] for r in bench.queue_rows() if r[0] == first.id), 120, "progress shown")
    bench.stop(first.id)
    wait_for(lambda: first.state != "running", 120, "the first stopped")
    assert first.state == "stopped", first.error
    assert list((first.run_dir / "checkpoints").glob("step-*"))  # saved on the way out, as Ctrl-C does
    wait_for(lambda: second.state in ("done", "failed"), 180, "the second finished")
    assert second.state == "done", second.error
    again = bench.submit_resume(first.run_dir)
    resuming = lambda: again.log is not None and again.log.exists() and "resuming from" in again.log.read_text()  # noqa: E731
    wait_for(lambda: again.state == "running" and resuming(), 120, "the resume")
    bench.stop(again.id)
    wait_for(lambda: again.state != "running", 120, "the resume stopped")
    assert again.state == "stopped", again.error


def test_stop_works_before_the_training_loop_even_when_the_server_ignores_sigint(folders):
    """A server started in the background (nohup, `&` in a script) hands SIGINT down as ignored: Stop during a
    training's start-up (loading, base evaluation, the learning-rate probe) must still end it, not be lost."""
    import signal

    data, runs, _ = folders
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a background server's children inherit
    try:
        bench = Workbench(data, runs)
        job = bench.submit_training(
            [data / "book.txt"], ["--model", "gpt-tiny", "--minutes", "10", "--eval.reference", "null"], "book"
        )
        wait_for(lambda: job.state == "running" and job.log is not None and job.log.exists(), 60, "started")
        time.sleep(1.0)  # the child is importing or loading: lmtune's own stop handling is not installed yet
        bench.stop(job.id)
        wait_for(lambda: job.state != "running", 60, "the stop ended the training")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert job.state == "stopped", job.error
