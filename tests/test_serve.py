"""`fedcredit serve`: a real HTTP service, its decisions and its signed decision trail."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from bench.score_throughput import uci_format
from fedcredit.cli import main as cli_main
from tests.conftest import REPO
from tests.serving import build_package, records, served


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    pkg, apps = build_package(d / "model")
    return d, pkg, apps


@pytest.fixture(scope="module")
def service(package):
    """One service for the module: the UCI mapping applies, applications stored in full."""
    d, _, _ = package
    with served(["--model", d / "model", "--mapping", "uci-taiwan", "--decisions", d / "decisions",
                 "--institution", "Example Lending Ltd"], d / "serve.log") as svc:
        yield svc


def _cli(capsys, *args) -> tuple[int, str, str]:
    """Run a fedcredit command in this process: (exit code, stdout, stderr)."""
    code = cli_main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _post(service, path: str, body=None, **kw) -> httpx.Response:
    return httpx.post(service.url + path, json=body, timeout=60, **kw) if body is not None else \
        httpx.post(service.url + path, timeout=60, **kw)


def _uci_applications(pkg, apps) -> list[dict]:
    return records(uci_format(apps, pkg.schema))


def _expected(pkg, apps: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """PD and 3 reasons per applicant, computed in this process the way `fedcredit score --explain 3` does."""
    from models.reasons import adverse_action_reasons

    x = pkg.encoder.transform(apps)
    model = pkg.model()
    from models.network import predict_pd

    return predict_pd(model, x), adverse_action_reasons(model, pkg.encoder, pkg.schema, x, 3)


# ----------------------------------------------------------------------------- deciding
def test_one_application_is_decided_with_the_mapping_and_recorded(package, service):
    d, pkg, apps = package
    app = _uci_applications(pkg, apps)[0]
    r = _post(service, "/v1/decisions", app)
    assert r.status_code == 201, r.text
    body = r.json()
    pd_expected, reasons_expected = _expected(pkg, apps.iloc[:1])
    assert abs(body["pd"] - pd_expected[0]) < 1e-6
    assert body["score"] == pytest.approx(float(pkg.scale.points([body["pd"]])[0]), abs=0.06)
    assert body["decision"] == ("approve" if body["pd"] < 0.15 else "decline") and body["cutoff_pd"] == 0.15
    assert body["reasons"] == [x for x in reasons_expected[0] if x]
    assert body["model"]["package_sha256"] == hashlib.sha256((d / "model" / "model.json").read_bytes()).hexdigest()
    assert r.headers["location"] == f"/v1/decisions/{body['decision_id']}"
    stored = httpx.get(service.url + r.headers["location"], timeout=30).json()
    entry = stored["decision"]
    assert entry["kind"] == "decision" and entry["hash"] == body["trail"]["hash"]
    assert entry["payload"]["application"] == app  # as received, in the institution's own field names
    assert entry["payload"]["outputs"] == {"pd": body["pd"], "score": body["score"], "decision": body["decision"]}


def test_concurrent_applications_get_their_own_decisions(package, service):
    from concurrent.futures import ThreadPoolExecutor

    _, pkg, apps = package
    uci = _uci_applications(pkg, apps)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda a: _post(service, "/v1/decisions", a), uci[:24]))
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers if a.status_code != 201]
    pd_expected, reasons_expected = _expected(pkg, apps.iloc[:24])
    got = np.array([a.json()["pd"] for a in answers])
    np.testing.assert_allclose(got, pd_expected, atol=1e-6)
    assert [a.json()["reasons"] for a in answers] == [[x for x in row if x] for row in reasons_expected]
    assert len({a.json()["decision_id"] for a in answers}) == 24


def test_invalid_application_is_422_in_the_words_of_data_validate(package, service, tmp_path, capsys):
    d, pkg, apps = package
    app = _uci_applications(pkg, apps)[1]
    app["AGE"] = "unknown"
    del app["SEX"]
    r = _post(service, "/v1/decisions", app)
    assert r.status_code == 422, r.text
    problems = {p["field"]: p for p in r.json()["problems"]}
    assert set(problems) == {"AGE", "SEX"}
    assert problems["AGE"]["code"] == "non-numeric" and problems["SEX"]["code"] == "missing-column"
    # the same application as a file: `fedcredit score` (validated as `data validate`) words it the same
    pd.DataFrame([app]).to_csv(tmp_path / "one.csv", index=False)
    code, _, err = _cli(capsys, "score", "--model", d / "model", "--data", tmp_path / "one.csv", "--mapping",
                        "uci-taiwan")
    assert code == 2
    for p in problems.values():
        assert p["message"] in err


BAD_BODIES = [  # (body bytes, content type, expected status)
    (b"{not json", "application/json", 400),
    (b'{"a": 1, "a": 2}', "application/json", 400),
    (b'{"AGE": NaN}', "application/json", 400),
    (b"\xff\xfe", "application/json", 400),
    (b"[1, 2]", "application/json", 422),
    (b"null", "application/json", 422),
    (b"{}", "application/json", 422),
    (b'{"AGE": {"years": 39}, "LIMIT_BAL": [1, 2], "SEX": true, "PAY_0": 1e400}', "application/json", 422),
    (b'{"AGE": 39}', "text/plain", 415),
    (b'{"AGE": 39}', "", 415),
    (b'{"x": "' + b"a" * 70_000 + b'"}', "application/json", 413),
]


def test_bad_input_is_never_a_500(package, service):
    for body, ctype, status in BAD_BODIES:
        r = httpx.post(service.url + "/v1/decisions", content=body, headers={"Content-Type": ctype} if ctype else {},
                       timeout=60)
        assert r.status_code == status, (body[:60], r.status_code, r.text[:300])
        assert r.json()["error"] and r.json()["message"]
    r = httpx.post(service.url + "/v1/decisions/batch", json={"applications": [{"AGE": 1}] * 1001}, timeout=60)
    assert r.status_code == 413
    assert httpx.get(service.url + "/v1/nowhere", timeout=30).status_code == 404
    assert httpx.get(service.url + "/v1/decisions", timeout=30).status_code == 405
    assert httpx.get(service.url + "/healthz", timeout=30).json()["status"] == "ok"


def test_batch_is_all_or_nothing_with_item_numbers(package, service):
    _, pkg, apps = package
    uci = _uci_applications(pkg, apps)[30:34]
    before = httpx.get(service.url + "/healthz", timeout=30).json()["trail"]["entries"]
    bad = [dict(a) for a in uci]
    bad[2]["LIMIT_BAL"] = -5
    r = _post(service, "/v1/decisions/batch", {"applications": bad})
    assert r.status_code == 422
    [problem] = r.json()["problems"]
    assert problem["field"] == "LIMIT_BAL" and problem["items"] == [3] and "data row 3" in problem["message"]
    assert httpx.get(service.url + "/healthz", timeout=30).json()["trail"]["entries"] == before
    r = _post(service, "/v1/decisions/batch", {"applications": uci})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["count"] == 4 and [x["batch"]["item"] for x in body["decisions"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([x["pd"] for x in body["decisions"]], _expected(pkg, apps.iloc[30:34])[0], atol=1e-6)


def test_model_and_health(package, service):
    d, pkg, _ = package
    m = httpx.get(service.url + "/v1/model", timeout=30).json()
    assert m["cutoff_pd"] == 0.15 and m["schema"]["key"] == pkg.schema.key
    fields = {f["schema_column"]: f["field"] for f in m["schema"]["fields"]}
    assert fields["credit_limit"] == "LIMIT_BAL" and fields["pay_status_1"] == "PAY_0"  # the mapping's names
    assert m["cutoff_score"] == pytest.approx(float(pkg.scale.points([0.15])[0]), abs=0.06)
    h = httpx.get(service.url + "/healthz", timeout=30).json()
    assert h["status"] == "ok" and h["model"] == {k: m["model"][k] for k in ("package_sha256", "weights_sha256", "run_id")}


def _a_decision(service, apps_json: list[dict], outcome: str) -> dict:
    r = _post(service, "/v1/decisions/batch", {"applications": apps_json})
    assert r.status_code == 201, r.text
    found = [x for x in r.json()["decisions"] if x["decision"] == outcome]
    assert found, f"no {outcome} among {len(apps_json)} applicants"
    return found[0]


def test_notice_for_a_decline_and_override_chained_after_it(package, service):
    _, pkg, apps = package
    declined = _a_decision(service, _uci_applications(pkg, apps)[34:60], "decline")
    did = declined["decision_id"]
    notice = httpx.get(f"{service.url}/v1/decisions/{did}/notice", timeout=30)
    assert notice.status_code == 200 and notice.headers["content-type"].startswith("text/plain")
    text = notice.text
    assert did in text and "Example Lending Ltd" in text and "unable to approve" in text
    for reason in declined["reasons"]:  # the schema's wording, as sentences
        assert reason[0].upper() + reason[1:] + "." in text
    assert f"{declined['score']:.0f} points" in text

    r = _post(service, f"/v1/decisions/{did}/override", {"decision": "approve", "by": "a.officer"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "reason"
    r = _post(service, "/v1/decisions/no-such-id/override", {"decision": "approve", "reason": "x", "by": "y"})
    assert r.status_code == 404
    r = _post(service, f"/v1/decisions/{did}/override",
              {"decision": "approve", "reason": "income verified with payslips", "by": "a.officer"})
    assert r.status_code == 201, r.text
    assert r.json()["from"] == "decline" and r.json()["changes_outcome"] is True
    stored = httpx.get(f"{service.url}/v1/decisions/{did}", timeout=30).json()
    [override] = stored["overrides"]
    assert override["payload"]["decision_hash"] == declined["trail"]["hash"]
    assert override["index"] > declined["trail"]["index"]
    assert httpx.get(f"{service.url}/v1/decisions/{did}/notice", timeout=30).status_code == 409  # stands approved

    approved = _a_decision(service, _uci_applications(pkg, apps)[34:60], "approve")
    assert httpx.get(f"{service.url}/v1/decisions/{approved['decision_id']}/notice", timeout=30).status_code == 409
    r = _post(service, f"/v1/decisions/{approved['decision_id']}/override",
              {"decision": "decline", "reason": "documents show undisclosed debts", "by": "b.officer"})
    assert r.status_code == 201
    text = httpx.get(f"{service.url}/v1/decisions/{approved['decision_id']}/notice", timeout=30).text
    assert "Documents show undisclosed debts." in text and "staff reviewed" in text


def _documented_curl() -> tuple[str, str]:
    """The curl command of docs/institution.md's decision service section and the application it sends."""
    doc = (REPO / "docs" / "institution.md").read_text()
    section = doc[doc.index("## Instant decisions"):]
    application = re.search(r"```json application\.json\n(.*?)```", section, re.S).group(1)
    command = re.search(r"```bash curl\n(.*?)```", section, re.S).group(1)
    return command, application


def test_the_documented_curl_example_works(package, service, tmp_path):
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed; the documented example needs it")
    command, application = _documented_curl()
    (tmp_path / "application.json").write_text(application)
    port = service.ready["port"]
    proc = subprocess.run(["bash", "-c", command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["decision"] in ("approve", "decline") and len(answer["decision_id"]) == 36


# ---------------------------------------------------------------------------- the trail
@pytest.fixture(scope="module")
def stopped_trail(package, service):
    """The module service's trail after an orderly stop (SIGTERM), and some of its decisions."""
    d, pkg, apps = package
    answers = [_post(service, "/v1/decisions", a).json() for a in _uci_applications(pkg, apps)[:3]]
    assert service.stop() == 0
    return d / "decisions", answers


def test_trail_verifies_and_decisions_reproduce(package, stopped_trail, capsys):
    trail, answers = stopped_trail
    code, out, _ = _cli(capsys, "decisions", "verify", trail, "--public-key", trail / "decisions-key.pub.pem",
                        "--head", answers[-1]["trail"]["hash"], "--json")
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ok"] and result["counts"]["decision"] >= 3 and result["counts"]["service-stop"] == 1
    code, out, err = _cli(capsys, "decisions", "show", answers[0]["decision_id"], "--decisions", trail, "--json")
    assert code == 0, out + err
    shown = json.loads(out.strip().splitlines()[-1])
    assert shown["reproduced"]["matches"] and shown["decision"]["hash"] == answers[0]["trail"]["hash"]
    assert "REPRODUCED" in out


def test_show_refuses_another_package(package, stopped_trail, tmp_path, capsys):
    trail, answers = stopped_trail
    build_package(tmp_path / "other", rows=600, seed=5)
    code, _, err = _cli(capsys, "decisions", "show", answers[0]["decision_id"], "--decisions", trail, "--model",
                        tmp_path / "other")
    assert code == 2 and "is not the package that made this decision" in err


def _change_pd(line: bytes) -> bytes:
    entry = json.loads(line)
    entry["payload"]["outputs"]["pd"] = 0.01  # a decline made to look like an approval
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_tampering_is_detected_and_the_service_refuses_a_broken_trail(package, stopped_trail, tmp_path, capsys):
    d, _, _ = package
    trail, answers = stopped_trail
    target = answers[1]["trail"]["index"]
    cases = {
        "modified": lambda lines: lines[:target] + [_change_pd(lines[target])] + lines[target + 1:],
        "removed": lambda lines: lines[:target] + lines[target + 1:],
        "reordered": lambda lines: lines[:target] + [lines[target + 1], lines[target]] + lines[target + 2:],
    }
    for name, change in cases.items():
        copy = tmp_path / name
        shutil.copytree(trail, copy)
        lines = (copy / "decisions.jsonl").read_bytes().split(b"\n")[:-1]
        (copy / "decisions.jsonl").write_bytes(b"\n".join(change(lines)) + b"\n")
        code, out, _ = _cli(capsys, "decisions", "verify", copy, "--json")
        result = json.loads(out.strip().splitlines()[-1])
        assert code == 1 and result["first_bad_index"] == target and "NOT INTACT" in out, (name, result)
    code, _, err = _cli(capsys, "serve", "--model", d / "model", "--decisions", tmp_path / "modified", "--port", 0)
    assert code == 2 and "does not verify" in err


def test_override_from_the_command_line_and_the_notice_command(package, stopped_trail, tmp_path, capsys):
    trail, answers = stopped_trail
    copy = tmp_path / "trail"
    shutil.copytree(trail, copy)
    did = answers[2]["decision_id"]
    code, out, err = _cli(capsys, "decisions", "override", did, "--decisions", copy, "--decision", "decline",
                          "--reason", "applicant withdrew consent", "--by", "c.officer", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["to"] == "decline"
    code, out, _ = _cli(capsys, "decisions", "notice", did, "--decisions", copy)
    assert code == 0 and "Applicant withdrew consent." in out
    assert _cli(capsys, "decisions", "verify", copy)[0] == 0
    code, _, err = _cli(capsys, "decisions", "notice", "nope", "--decisions", copy)
    assert code == 2 and "no decision 'nope'" in err


# ------------------------------------------------------------------------- start-up
def test_the_service_starts_only_with_a_verified_package(package, tmp_path, capsys):
    import socket

    d, _, _ = package
    shutil.copytree(d / "model", tmp_path / "model")
    weights = tmp_path / "model" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    code, _, err = _cli(capsys, "serve", "--model", tmp_path / "model", "--decisions", tmp_path / "dec", "--port", 0)
    assert code == 2 and "sha256 does not match" in err
    assert not (tmp_path / "dec").exists()
    code, _, err = _cli(capsys, "serve", "--model", d / "model")
    assert code == 2 and "--decisions DIR is required" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        code, _, err = _cli(capsys, "serve", "--model", d / "model", "--decisions", tmp_path / "dec2", "--port",
                            taken.getsockname()[1])
    assert code == 2 and "cannot listen on 127.0.0.1" in err and not (tmp_path / "dec2").exists()


def test_a_damaged_package_stops_the_real_command_without_a_traceback(package, tmp_path):
    from tests.conftest import run_fedcredit

    d, _, _ = package
    shutil.copytree(d / "model", tmp_path / "model")
    (tmp_path / "model" / "encoder.json").write_text("{}")
    proc = run_fedcredit("serve", "--model", tmp_path / "model", "--decisions", tmp_path / "dec", "--port", "0",
                         timeout=180)
    assert proc.returncode == 2 and "encoder.json" in proc.stderr and "Traceback" not in proc.stderr
