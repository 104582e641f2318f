"""Output and input paths are checked before a command does any work (fedcredit/path_checks.py):
exit 2, one message naming the option and the path, no traceback, nothing written."""

from __future__ import annotations

import json

import pytest

from configs.errors import UserError
from fedcredit.cli import main as cli_main
from fedcredit.path_checks import check_input_file, check_output_dir, check_output_file


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "a.csv", "--out", (".csv",)) == tmp_path / "a.csv"
    with pytest.raises(UserError, match=r"--out .*missing/a\.csv: the directory .*missing does not exist"):
        check_output_file(tmp_path / "missing" / "a.csv", "--out")
    assert check_output_file(tmp_path / "new" / "r.html", "--out", (".html",), create_parent=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot be created"):
        check_output_file(tmp_path / "file" / "sub" / "r.html", "--out", create_parent=True)
    with pytest.raises(UserError, match="is not a directory"):
        check_output_file(tmp_path / "file" / "r.html", "--out")
    with pytest.raises(UserError, match=r"cannot write a \.CSV2.*\.csv or \.parquet"):
        check_output_file(tmp_path / "a.CSV2", "--out", (".csv", ".parquet"))
    assert check_output_file(tmp_path / "A.CSV", "--out", (".csv",))  # suffixes are case-insensitive
    with pytest.raises(UserError, match="is a directory"):
        check_output_file(tmp_path, "--out")


def test_check_output_dir_and_input_file(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "f.txt")
    with pytest.raises(UserError, match="cannot be created"):
        check_output_dir(tmp_path / "f.txt" / "sub")
    assert check_input_file(tmp_path / "f.txt", "--data", (".txt",)) == tmp_path / "f.txt"
    with pytest.raises(UserError, match="--data .*nope.csv: no such table"):
        check_input_file(tmp_path / "nope.csv", "--data", what="table")
    with pytest.raises(UserError, match="is a directory"):
        check_input_file(tmp_path, "--data")
    with pytest.raises(UserError, match=r"not a table \(\.txt\); expected \.csv or \.parquet"):
        check_input_file(tmp_path / "f.txt", "--data", (".csv", ".parquet"), what="table")


@pytest.mark.parametrize("argv", [
    ["ledger", "keygen", "--out", "{file}"],
    ["keys", "--out", "{file}", "--name", "bank-a"],
    ["certs", "--out", "{file}/sub", "--hosts", "localhost"],
    ["keys", "--out", "{file}/sub", "--name", "bank-a"],
])
def test_key_and_certificate_commands_refuse_an_out_that_is_not_a_directory(tmp_path, capsys, argv):
    """`ledger keygen --out FILE` ended in a FileExistsError traceback."""
    file = tmp_path / "model.json"
    file.write_text("{}")
    argv = [a.replace("{file}", str(file)) for a in argv]
    assert cli_main(argv + ["--json"]) == 2
    captured = capsys.readouterr()
    assert "--out" in captured.err and str(file) in captured.err and "Traceback" not in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["ok"] is False
    assert file.read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_report_checks_its_outputs_before_rendering(tmp_path, capsys, monkeypatch):
    import server.report

    def no_work(*a, **k):
        raise AssertionError("the report was rendered before its output paths were checked")

    monkeypatch.setattr(server.report, "write_report", no_work)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "file").write_text("x")
    for out, words in (("report.pdf", "cannot write a .pdf; name the file with .html or .htm"),
                       (str(tmp_path / "file" / "r.html"), "file is not a directory"),
                       (str(tmp_path / "file" / "sub" / "r.html"), "cannot be created")):
        assert cli_main(["report", str(run_dir), "--out", out]) == 2
        err = capsys.readouterr().err
        assert f"--out {out}" in err and words in err, err
