"""mmtransfer serve: a real uvicorn server on a free port of 127.0.0.1 answers as ``predict`` does, batches
requests that arrive together, and refuses what it must (body size, bad rows, paths outside --data-root, a full
queue) while it goes on answering."""

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from mmtransfer import artifact  # noqa: E402
from mmtransfer.inference import predict  # noqa: E402
from mmtransfer.serve.app import create_app, listen  # noqa: E402
from mmtransfer.serve.engine import Settings  # noqa: E402


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextmanager
def server(run_dir, **settings):
    """(base URL, loaded run, log lines, engine) of a uvicorn server in a thread of this process."""
    run = artifact.load(run_dir)
    app = create_app(run, Settings(**settings))
    lines = Lines()
    logger = logging.getLogger("mmtransfer.serve")
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    sock = listen("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", run, lines.lines, app.state.engine
    finally:
        srv.should_exit = True
        thread.join(10)
        logger.removeHandler(lines)
        sock.close()


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def table_rows(fitted_runs, n=6) -> pd.DataFrame:
    table = fitted_runs["_table"]
    return pd.read_csv(table).iloc[:n]


def predicted(run, rows: pd.DataFrame, tmp_path) -> pd.DataFrame:
    """``predict``'s CSV for ``rows`` (paths relative to the mixed table's folder)."""
    path = tmp_path / "rows.csv"
    rows.to_csv(path, index=False)
    predict(run, path, tmp_path / "pred.csv", progress=False)
    return pd.read_csv(tmp_path / "pred.csv")


def test_health_metadata_and_predict_answer_as_predict_does_for_an_image_run(fitted_runs, tmp_path):
    base = fitted_runs["_table"].parent
    rows = table_rows(fitted_runs)
    rows["picture"] = [str(base / p) for p in rows["picture"]]
    with server(fitted_runs["cnn"]) as (url, run, log, _):
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        meta = httpx.get(f"{url}/metadata").json()
        assert meta["classes"] == run.classes == ["cat", "dog", "owl"]
        assert [(i["name"], i["kind"]) for i in meta["inputs"]] == [("picture", "image")]
        assert meta["inputs"][0]["preprocessing"]["size"] == [12, 12]
        assert meta["manifest_digest"] == run.manifest["digest"] and len(meta["manifest_digest"]) == 64
        assert meta["versions"]["trained_with"]["torch"]
        body = {"rows": [{"picture": b64(Path(p))} for p in rows["picture"]]}
        answer = httpx.post(f"{url}/predict", json=body)
        assert answer.status_code == 200, answer.text
        got = answer.json()["predictions"]
        expected = predicted(run, rows[["picture", "label"]], tmp_path)
        assert [g["prediction"] for g in got] == expected["prediction"].tolist()
        probs = np.array([[g["probabilities"][c] for c in run.classes] for g in got])
        np.testing.assert_allclose(probs, expected[[f"p_{c}" for c in run.classes]].to_numpy(), atol=1e-5)
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
        # one row as a multipart upload: the same answer
        with open(rows["picture"][0], "rb") as f:
            upload = httpx.post(f"{url}/predict", files={"picture": ("x.png", f, "image/png")})
        assert upload.status_code == 200, upload.text
        assert upload.json()["predictions"][0]["probabilities"] == pytest.approx(got[0]["probabilities"], abs=1e-6)
    assert any(line.startswith("POST /predict 200 rows=6 batch=6 ") and line.endswith(" ms") for line in log), log


def test_a_text_run_answers_as_predict_and_a_too_long_text_is_its_rows_error(fitted_runs, tmp_path):
    rows = table_rows(fitted_runs)[["caption", "label"]]
    with server(fitted_runs["bert"]) as (url, run, _, _):
        got = httpx.post(f"{url}/predict", json=rows[["caption"]].to_dict("records")).json()["predictions"]
        expected = predicted(run, rows, tmp_path)
        probs = np.array([[g["probabilities"][c] for c in run.classes] for g in got])
        np.testing.assert_allclose(probs, expected[[f"p_{c}" for c in run.classes]].to_numpy(), atol=1e-5)
        long = " ".join(["cat"] * 40)  # max_length 12
        answer = httpx.post(f"{url}/predict", json={"rows": [{"caption": long}, {"caption": "a cat sits"}]})
        assert answer.status_code == 200
        first, second = answer.json()["predictions"]
        assert first["error"].startswith("row 0, column 'caption': text of 42 tokens, over the 12 the model reads")
        assert "prediction" in second
        alone = httpx.post(f"{url}/predict", json={"caption": long})
        assert alone.status_code == 422 and alone.json()["error"].startswith("row 0, column 'caption': text of")
    with server(fitted_runs["bert"], truncate_text=True) as (url, _, _, _):
        assert "prediction" in httpx.post(f"{url}/predict", json={"caption": long}).json()["predictions"][0]


def test_requests_that_arrive_together_are_predicted_in_one_batch(fitted_runs):
    base = fitted_runs["_table"].parent
    photo = b64(base / "img" / "0.png")
    with server(fitted_runs["cnn"], max_wait_ms=200, max_batch=64) as (url, _, log, _):
        with httpx.Client() as client, ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: client.post(f"{url}/predict", json={"picture": photo}), range(8)))
    assert {a.status_code for a in answers} == {200}
    assert len({json.dumps(a.json()["predictions"]) for a in answers}) == 1
    batches = [int(line.split("batch=")[1].split()[0]) for line in log if "batch=" in line]
    assert len(batches) == 8 and max(batches) > 1, log


def test_bad_requests_get_one_line_each_and_the_server_goes_on(fitted_runs, tmp_path):
    base = fitted_runs["_table"].parent
    photo = b64(base / "img" / "0.png")
    with server(fitted_runs["cnn"], max_body=4096) as (url, _, _, _):
        big = httpx.post(f"{url}/predict", json={"picture": "A" * 8000})
        assert big.status_code == 413 and "over 4,096 bytes" in big.json()["error"]
        broken = httpx.post(f"{url}/predict", content=b'{"rows": [', headers={"content-type": "application/json"})
        assert broken.status_code == 400 and broken.json()["error"].startswith("malformed JSON: ")
        assert httpx.post(f"{url}/predict", content=b"x", headers={"content-type": "text/csv"}).status_code == 415
        assert httpx.post(f"{url}/predict", json={"rows": []}).status_code == 400
        garbage = base64.b64encode(b"not a picture at all").decode()
        mixed = httpx.post(f"{url}/predict", json={"rows": [{"picture": garbage}, {"picture": photo}, {"pic": photo},
                                                            {"picture": "%%%"}, {"picture": 3}]})  # fmt: skip
        assert mixed.status_code == 200
        bad, good, missing, not_b64, number = mixed.json()["predictions"]
        assert bad["error"].startswith("row 0, column 'picture': unreadable or corrupt image")
        assert "mmtransfer-serve" not in bad["error"]  # the server's temporary file is not named
        assert "prediction" in good
        assert missing["error"].startswith("row 2, column 'picture': missing") and "did you mean" not in missing
        assert not_b64["error"].startswith("row 3, column 'picture': not base64")
        assert number["error"].startswith("row 4, column 'picture': expected the image in base64")
        assert mixed.json()["ignored_columns"] == ["pic"]
        empty = httpx.post(f"{url}/predict", json={"rows": [{"picture": None}, {"picture": photo}]}).json()
        assert empty["predictions"][0]["error"] == "row 0, column 'picture': every input of this row is empty"
        served = httpx.post(f"{url}/predict", json={"picture": {"path": "img/0.png"}})
        assert served.status_code == 422 and "started without --data-root" in served.json()["error"]
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_a_run_of_every_modality_answers_as_predict_and_a_bad_recording_is_its_rows_error(fitted_runs, tmp_path):
    base = fitted_runs["_table"].parent
    rows = table_rows(fitted_runs, 4)
    body = [{"picture": b64(base / r.picture), "sound": b64(base / r.sound), "caption": r.caption,
             "weight": r.weight, "colour": r.colour} for r in rows.itertuples()]  # fmt: skip
    body[3]["sound"] = base64.b64encode(b"RIFF....WAVEfmt but no audio").decode()
    with server(fitted_runs["fused"]) as (url, run, _, _):
        answer = httpx.post(f"{url}/predict", json={"rows": body})
        rows[["picture", "sound"]] = rows[["picture", "sound"]].map(lambda p: str(base / p))
        expected = predicted(run, rows.iloc[:3], tmp_path)
    assert answer.status_code == 200
    got = answer.json()["predictions"]
    assert got[3]["error"].startswith("row 3, column 'sound': ") and "mmtransfer-serve" not in got[3]["error"], got[3]
    probs = np.array([[g["probabilities"][c] for c in run.classes] for g in got[:3]])
    np.testing.assert_allclose(probs, expected[[f"p_{c}" for c in run.classes]].to_numpy(), atol=1e-5)


def test_files_are_read_under_data_root_only(fitted_runs, tmp_path):
    root = fitted_runs["_table"].parent
    outside = tmp_path / "secret.png"
    outside.write_bytes((root / "img" / "1.png").read_bytes())
    link = root / "img" / "link.png"
    link.symlink_to(outside)
    try:
        with server(fitted_runs["cnn"], data_root=root) as (url, _, _, _):
            ok = httpx.post(f"{url}/predict", json={"picture": {"path": "img/0.png"}})
            assert ok.status_code == 200 and "prediction" in ok.json()["predictions"][0]
            refused = [("../../etc/passwd", "without '..'"), ("/etc/passwd", "relative to the data root"),
                       ("img/link.png", "leads outside the data root"), ("img/none.png", "no such file")]  # fmt: skip
            for path, says in refused:
                answer = httpx.post(f"{url}/predict", json={"picture": {"path": path}})
                assert answer.status_code == 422 and says in answer.json()["error"], (path, answer.text)
            assert httpx.get(f"{url}/health").status_code == 200
    finally:
        link.unlink()


def test_an_internal_error_is_a_500_with_an_id_and_a_full_queue_is_503(fitted_runs):
    photo = b64(fitted_runs["_table"].parent / "img" / "0.png")
    with server(fitted_runs["cnn"]) as (url, _, log, engine):
        original = engine.predict
        engine.predict = lambda requests: 1 / 0
        broken = httpx.post(f"{url}/predict", json={"picture": photo})
        engine.predict = original
        assert broken.status_code == 500
        incident = broken.json()["id"]
        assert "Traceback" not in broken.text and "ZeroDivision" not in broken.text
        assert any(incident in line and "ZeroDivisionError" in line for line in log)
        assert httpx.post(f"{url}/predict", json={"picture": photo}).status_code == 200
    with server(fitted_runs["cnn"], max_queue=1, max_wait_ms=0) as (url, _, _, engine):
        original = engine.predict
        engine.predict = lambda requests: (time.sleep(0.5), original(requests))[1]
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: client.post(f"{url}/predict", json={"picture": photo}).status_code,
                                  range(6)))  # fmt: skip
        assert 503 in codes and 200 in codes
        engine.predict = original
        assert httpx.post(f"{url}/predict", json={"picture": photo}).status_code == 200


def test_answers_of_each_task():
    from mmtransfer.tasks import TASKS

    classes = ["a", "b"]
    p = np.array([[0.2, 0.8]])
    assert TASKS["classification"]().answers(p, classes) == [
        {"prediction": "b", "probabilities": {"a": pytest.approx(0.2), "b": pytest.approx(0.8)}}
    ]
    assert TASKS["regression"](label="price").answers(np.array([3.5]), []) == [{"prediction": 3.5, "target": "price"}]
    multi = TASKS["multilabel"](labels=classes, thresholds=[0.1, 0.9]).answers(p, classes)
    assert multi[0]["prediction"] == ["a"] and multi[0]["probabilities"]["b"] == pytest.approx(0.8)


def test_cli_refuses_a_missing_run_and_a_port_in_use(fitted_runs, tmp_path):
    done = run_cli("serve", tmp_path / "nothing", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "no such run folder" in done.stderr
    (tmp_path / "a.csv").write_text("x\n")
    done = run_cli("serve", tmp_path / "a.csv", cwd=tmp_path)
    assert done.returncode == 2 and "a.csv: a file, not a run folder" in done.stderr
    taken = listen("127.0.0.1", 0)
    try:
        done = run_cli("serve", fitted_runs["cnn"], "--port", taken.getsockname()[1], cwd=tmp_path)
    finally:
        taken.close()
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "cannot listen on 127.0.0.1:" in done.stderr
    done = run_cli("serve", fitted_runs["cnn"], "--data-root", tmp_path / "absent", cwd=tmp_path)
    assert done.returncode == 2 and "--data-root" in done.stderr and "not a folder" in done.stderr


@pytest.mark.slow
def test_the_serve_command_starts_answers_logs_and_stops_on_sigterm(fitted_runs, tmp_path):
    log = tmp_path / "requests.log"
    proc = subprocess.Popen([sys.executable, "-m", "mmtransfer", "serve", str(fitted_runs["cnn"]), "--port", "0",
                             "--log", str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"serving {fitted_runs['cnn']} (classification; reads picture (image)) at http://"), (
            first
        )
        url = first.split(" at ")[1].strip()
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
        photo = b64(fitted_runs["_table"].parent / "img" / "0.png")
        assert httpx.post(f"{url}/predict", json={"picture": photo}, timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "POST /predict 200 rows=1 batch=1" in log.read_text()
    assert "Traceback" not in err


def test_a_run_of_built_in_data_is_refused_with_one_line(small_run, tmp_path):
    from mmtransfer.display import make_console
    from mmtransfer.runs import fit_run

    fit_run(small_run, tmp_path / "digits", make_console(quiet=True))
    done = run_cli("serve", tmp_path / "digits", "--port", "0", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "built-in digits data" in done.stderr and "serve a run fitted on a table or folder" in done.stderr


def test_predict_sets_aside_a_row_whose_every_input_is_empty_as_serve_does(fitted_runs, tmp_path):
    from mmtransfer.inference import read_rows

    rows = table_rows(fitted_runs, 3)[["picture", "label"]]
    rows["picture"] = [str(fitted_runs["_table"].parent / p) for p in rows["picture"]]
    rows.loc[1, "picture"] = None
    rows.to_csv(tmp_path / "rows.csv", index=False)
    read = read_rows(artifact.load(fitted_runs["cnn"]), tmp_path / "rows.csv", on_bad_rows="skip")
    assert [(b.row, b.column, b.reason) for b in read.rejected] == [(1, "picture", "every input of this row is empty")]
