"""The institution's lifetime privacy ledger: ε from a fresh Opacus accountant, budget refusals,
fail-closed state, one budget across table versions, migration of earlier state, fresh starts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from privacy.accountant import (
    BudgetExceeded,
    PrivacyEvent,
    PrivacyLedger,
    PrivacyPolicyConflict,
    PrivacyStateError,
    compute_epsilon,
    read_state,
)
from configs.errors import UserError
from privacy.planning import plan_noise

FP = "ab12" * 16
DELTA = 1e-5


def open_ledger(state_dir, fingerprint=FP, max_epsilon=3.0, delta=DELTA, **kw):
    return PrivacyLedger.open(state_dir, fingerprint=fingerprint, schema_key="consumer-credit-v1@1",
                              institution_id="bank-a", max_epsilon=max_epsilon, delta=delta, **kw)


def opacus_epsilon(history, delta, mechanism="rdp"):
    """ε straight from a fresh Opacus accountant, one history entry per event (no merging)."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if mechanism == "rdp" else PRVAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return acc.get_epsilon(delta=delta)


def some_events(run="r1"):
    return [PrivacyEvent("statistics", 10.0, 1.0, 1, run_id=run),
            PrivacyEvent("train", 1.3, 0.02, 50, run_id=run, round=1),
            PrivacyEvent("evaluation", 10.0, 1.0, 1, run_id=run, round=1),
            PrivacyEvent("train", 1.3, 0.02, 50, run_id=run, round=2)]


def test_reported_epsilon_equals_independent_recomputation_from_stored_json(tmp_path):
    with open_ledger(tmp_path, max_epsilon=10.0) as ledger:
        spent = ledger.record(some_events())
    with open_ledger(tmp_path, max_epsilon=10.0) as ledger:
        spent2 = ledger.record([PrivacyEvent("train", 0.9, 0.05, 20, run_id="r2", round=1)])
        assert ledger.spent() == spent2 > spent
    stored = json.loads((tmp_path / "privacy" / "ledger.json").read_text())
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in stored["events"]]
    assert len(history) == 5
    expected = opacus_epsilon(history, stored["delta"])
    assert spent2 == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert opacus_epsilon(history[:4], DELTA) == pytest.approx(spent, rel=1e-12)
    (status,) = read_state(tmp_path)
    assert status["epsilon_spent"] == pytest.approx(expected, rel=1e-12)
    assert status["epsilon_remaining"] == pytest.approx(10.0 - expected)
    assert [e["kind"] for e in status["events"]] == ["statistics", "train", "evaluation", "train", "train"]
    assert all(e["time"].endswith("Z") for e in status["events"])
    # the PRV accountant gives what a fresh PRVAccountant gives for the same (merged) history
    prv = compute_epsilon([PrivacyEvent.from_dict(e) for e in stored["events"]], DELTA, "prv")
    assert prv == pytest.approx(opacus_epsilon([(10.0, 1.0, 2), (1.3, 0.02, 100), (0.9, 0.05, 20)], DELTA, "prv"))
    assert 0 < prv < expected


def test_no_events_is_zero_and_events_are_validated():
    assert compute_epsilon([], DELTA) == 0.0
    for bad in ({"noise_multiplier": 0.0}, {"sample_rate": 1.5}, {"steps": 0}, {"kind": "gossip"},
                {"noise_multiplier": float("nan")}):
        args = {"kind": "train", "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 3, **bad}
        with pytest.raises(ValueError):
            PrivacyEvent(**args)


def test_exhausted_budget_refuses_a_second_run_with_a_clear_message(tmp_path):
    q, steps = 256 / 8000, 32
    with open_ledger(tmp_path, max_epsilon=1.0) as ledger:
        ledger.record([PrivacyEvent("statistics", 10.0, 1.0, 1)])
        plan = plan_noise(prior_events=ledger.events, max_epsilon=1.0, delta=DELTA, sample_rate=q,
                          steps_per_round=steps, rounds=3)
        for r in range(3):
            ledger.record([plan.round_event("run-1", r + 1)])
        assert 1.0 - 0.011 <= ledger.spent() <= 1.0
        with pytest.raises(BudgetExceeded) as info:  # a fourth round the server asks for
            ledger.record([plan.round_event("run-1", 4)])
        assert len(ledger.events) == 4
        err = info.value
        assert err.budget == 1.0 and err.epsilon_if > 1.0 and err.spent == pytest.approx(ledger.spent())
        assert "would be exceeded" in str(err) and "max-epsilon" in str(err) and "bank-a" in str(err)
    with open_ledger(tmp_path, max_epsilon=1.0) as ledger:  # run 2, later, same data
        assert ledger.remaining() < 0.011
        with pytest.raises(BudgetExceeded, match="exhausted|too small") as info:
            plan_noise(prior_events=ledger.events, max_epsilon=1.0, delta=DELTA, sample_rate=q,
                       steps_per_round=steps, rounds=5)
        assert "max-epsilon" in str(info.value)


def test_policy_changes_are_recorded_and_a_larger_delta_is_refused(tmp_path):
    with open_ledger(tmp_path) as ledger:
        ledger.record(some_events())
        at_first = ledger.spent()
    with pytest.raises(PrivacyPolicyConflict, match="δ = 1e-05"):
        open_ledger(tmp_path, delta=1e-4)
    with open_ledger(tmp_path, delta=1e-6, max_epsilon=5.0, accountant="prv") as ledger:
        assert ledger.delta == 1e-6 and ledger.max_epsilon == 5.0 and ledger.accountant == "prv"
        assert ledger.spent() == pytest.approx(compute_epsilon(ledger.events, 1e-6, "prv"))
    with open_ledger(tmp_path, delta=1e-6, max_epsilon=5.0) as ledger:  # back to RDP: ε over all events
        assert ledger.spent() > at_first
        changes = ledger.policy_history
    assert changes[0]["change"] == "created"
    assert changes[1]["delta"] == 1e-6 and changes[1]["previous"]["delta"] == 1e-5
    assert changes[2]["accountant"] == "rdp"


# ------------------------------------------------------------------ fail closed on bad state
def _damage(path, how):
    text = path.read_text()
    if how == "bad-json":
        path.write_text(text.replace("{", "[", 1))
    elif how == "truncated":
        path.write_text(text[: len(text) // 2])
    elif how == "edited-event":  # lower a noise multiplier's steps, keep the old hash
        data = json.loads(text)
        data["events"][1]["steps"] = 1
        path.write_text(json.dumps(data))
    elif how == "wrong-type":
        data = json.loads(text)
        data["events"][1]["steps"] = "50"
        path.write_text(json.dumps(data))
    elif how == "events-dropped":  # consistent file with fewer events (e.g. an old backup)
        data = json.loads(text)
        from privacy.accountant import events_digest
        from privacy.state_files import content_digest

        data["events"] = data["events"][:2]
        data["events_sha256"] = events_digest([PrivacyEvent.from_dict(e) for e in data["events"]])
        data["sha256"] = content_digest(data)
        path.write_text(json.dumps(data))
    elif how == "deleted":
        path.unlink()
    elif how == "empty":
        path.write_text("")


@pytest.mark.parametrize("how", ["bad-json", "truncated", "edited-event", "wrong-type", "events-dropped",
                                 "deleted", "empty"])
def test_damaged_or_missing_state_is_an_error_never_a_reset(tmp_path, how):
    with open_ledger(tmp_path) as ledger:
        ledger.record(some_events())
    path = tmp_path / "privacy" / "ledger.json"
    _damage(path, how)
    with pytest.raises(PrivacyStateError) as info:
        open_ledger(tmp_path)
    message = str(info.value)
    assert str(path) in message and "backup" in message
    with pytest.raises(PrivacyStateError):
        read_state(tmp_path)
    # still refused on the next attempt: nothing was silently recreated
    with pytest.raises(PrivacyStateError):
        open_ledger(tmp_path)


def test_an_older_backup_put_back_is_refused_by_the_index(tmp_path):
    with open_ledger(tmp_path) as ledger:
        ledger.record(some_events()[:2])
    backup = (tmp_path / "privacy" / "ledger.json").read_bytes()
    with open_ledger(tmp_path) as ledger:
        ledger.record(some_events()[2:])
    (tmp_path / "privacy" / "ledger.json").write_bytes(backup)  # a consistent, older copy
    with pytest.raises(PrivacyStateError, match="holds 2 privacy events but the index recorded 4"):
        open_ledger(tmp_path)


def test_deleted_index_with_a_ledger_is_an_error(tmp_path):
    with open_ledger(tmp_path) as ledger:
        ledger.record(some_events())
    (tmp_path / "privacy" / "index.json").unlink()
    with pytest.raises(PrivacyStateError, match="index.json: missing"):
        open_ledger(tmp_path)
    with pytest.raises(PrivacyStateError, match="index"):
        read_state(tmp_path)


def test_a_new_table_version_keeps_the_spend(tmp_path):
    """The budget belongs to the institution: another fingerprint (a re-export, a dropped row)
    opens the same ledger, and its releases compose with the earlier ones."""
    with open_ledger(tmp_path, max_epsilon=10.0) as ledger:
        first = ledger.record(some_events())
    with open_ledger(tmp_path, fingerprint="cd34" * 16, max_epsilon=10.0) as ledger:
        assert ledger.spent() == pytest.approx(first)
        later = ledger.record([PrivacyEvent("train", 1.3, 0.02, 50, run_id="r2", round=1)])
    assert later > first
    (status,) = read_state(tmp_path)
    assert status["epsilon_spent"] == pytest.approx(later)
    assert set(status["data_versions"]) == {FP, "cd34" * 16} and status["fingerprint"] == "cd34" * 16


def _sided(kind, sigma, q, steps, rows, data, split="row-hash/v2 fraction=0.2 seed=0"):
    return PrivacyEvent(kind, sigma, q, steps, rows=rows, split=split, data=data)


def test_parallel_composition_inside_a_version_and_worst_case_across_versions():
    from privacy.composition import MAX_EXACT_VERSIONS, compute_epsilon

    t1, h1 = _sided("train", 1.0, 0.02, 400, "train", "v1"), _sided("evaluation", 3.0, 1.0, 5, "holdout", "v1")
    t2, h2 = _sided("train", 1.2, 0.02, 300, "train", "v2"), _sided("evaluation", 2.0, 1.0, 5, "holdout", "v2")
    hist = lambda *evs: [(e.noise_multiplier, e.sample_rate, e.steps) for e in evs]  # noqa: E731
    # one version: the worse side
    assert compute_epsilon([t1, h1], DELTA) == pytest.approx(max(opacus_epsilon(hist(t1), DELTA),
                                                                 opacus_epsilon(hist(h1), DELTA)), rel=1e-9)
    # two versions: a borrower whose row changed may be on either side in each
    worst = max(opacus_epsilon(hist(a, b), DELTA) for a in (t1, h1) for b in (t2, h2))
    assert compute_epsilon([t1, h1, t2, h2], DELTA) == pytest.approx(worst, rel=1e-9)
    assert worst < opacus_epsilon(hist(t1, h1, t2, h2), DELTA)  # still below all-sequential
    # more versions than are enumerated: the per-order bound, between the exact worst case and sequential
    many = [_sided("train", 1.5, 0.02, 50, "train", f"v{i}") for i in range(MAX_EXACT_VERSIONS + 1)]
    many += [_sided("evaluation", 3.0, 1.0, 1, "holdout", f"v{i}") for i in range(MAX_EXACT_VERSIONS + 1)]
    bound = compute_epsilon(many, DELTA)
    trains = [e for e in many if e.kind == "train"]
    assert opacus_epsilon(hist(*trains), DELTA) <= bound + 1e-9 <= opacus_epsilon(hist(*many), DELTA) + 1e-9


def test_rdp_orders_are_opacus_defaults():
    from opacus.accountants import RDPAccountant

    from privacy.composition import RDP_ORDERS

    assert RDP_ORDERS == tuple(RDPAccountant.DEFAULT_ALPHAS)


# ------------------------------------------------------------------ state of earlier versions
def _write_legacy(pdir, fp, events, delta=DELTA, institution="bank-a"):
    """A per-table-version state file as versions before 0.2 wrote it (format /1)."""
    from privacy.events import events_digest

    pdir.mkdir(parents=True, exist_ok=True)
    payload = {"format": "fedcredit-privacy-state/1", "fingerprint": fp, "schema_key": "consumer-credit-v1@1",
               "institution_id": institution, "accountant": "rdp", "delta": delta, "max_epsilon": 3.0,
               "policy_history": [{"time": "2024-01-01T00:00:00Z", "change": "created"}],
               "events": [{k: v for k, v in e.to_dict().items() if k != "data"} for e in events],
               "events_sha256": events_digest(events)}
    (pdir / f"{fp}.json").write_text(json.dumps(payload))
    return {"events": len(events), "events_sha256": payload["events_sha256"], "institution_id": institution,
            "schema_key": "consumer-credit-v1@1"}


def test_state_of_an_earlier_version_is_migrated_without_losing_spend(tmp_path):
    split = "row-hash/v1 fraction=0.2 seed=0"
    a = [PrivacyEvent("train", 1.1, 0.02, 200, rows="train", split=split, time="2024-01-02T00:00:00Z"),
         PrivacyEvent("evaluation", 20.0, 1.0, 1, rows="holdout", split=split, time="2024-01-02T00:01:00Z")]
    b = [PrivacyEvent("train", 1.3, 0.02, 150, rows="train", split=split, time="2024-02-01T00:00:00Z")]
    pdir = tmp_path / "privacy"
    index = {"ab" * 32: _write_legacy(pdir, "ab" * 32, a), "cd" * 32: _write_legacy(pdir, "cd" * 32, b, delta=1e-6)}
    (pdir / "index.json").write_text(json.dumps({"format": "fedcredit-privacy-index/1", "fingerprints": index}))
    # the two versions' events compose: worst case over the sides of each version, at the smaller δ
    worst = max(opacus_epsilon([(1.1, 0.02, 200), (1.3, 0.02, 150)], 1e-6), opacus_epsilon([(20.0, 1.0, 1),
                                                                                            (1.3, 0.02, 150)], 1e-6))
    (read_only,) = read_state(tmp_path)  # read-only: migrated in memory, nothing written
    assert read_only["epsilon_spent"] == pytest.approx(worst, rel=1e-9)
    assert not (pdir / "ledger.json").exists()
    with open_ledger(tmp_path, delta=None, max_epsilon=5.0) as ledger:
        assert ledger.delta == 1e-6 and ledger.spent() == pytest.approx(worst, rel=1e-9)
        assert [e.data for e in ledger.events] == ["ab" * 32, "ab" * 32, "cd" * 32]
        assert ledger.policy_history[-2]["change"] == "migrated"
    assert sorted(p.name for p in pdir.glob("*.migrated")) == [f"{'ab' * 32}.json.migrated",
                                                               f"{'cd' * 32}.json.migrated"]
    (after,) = read_state(tmp_path)
    assert after["epsilon_spent"] == pytest.approx(worst, rel=1e-9)
    (pdir / "ledger.json").unlink()  # the migrated ledger deleted: never a silent restart from the old files
    with pytest.raises(PrivacyStateError, match="ledger was deleted"):
        open_ledger(tmp_path, delta=None)


def test_a_deleted_legacy_file_the_index_knows_is_an_error(tmp_path):
    pdir = tmp_path / "privacy"
    index = {"ab" * 32: _write_legacy(pdir, "ab" * 32, some_events())}
    (pdir / "index.json").write_text(json.dumps({"format": "fedcredit-privacy-index/1", "fingerprints": index}))
    (pdir / f"{'ab' * 32}.json").unlink()
    with pytest.raises(PrivacyStateError, match="state file was deleted"):
        open_ledger(tmp_path)


# ------------------------------------------------------------------ a fresh start, on the record
def test_a_fresh_start_is_explicit_recorded_and_refuses_the_old_table(tmp_path):
    with open_ledger(tmp_path, max_epsilon=2.0) as ledger:
        spent = ledger.record(some_events())
        with pytest.raises(UserError, match="reason"):
            ledger.new_population("  ")
        assert ledger.new_population("portfolio sold; new business line") == pytest.approx(spent)
        assert ledger.spent() == 0.0 and len(ledger.all_events) == 4
    with pytest.raises(PrivacyPolicyConflict, match="fresh start"):  # the old population's table
        open_ledger(tmp_path, max_epsilon=2.0)
    with open_ledger(tmp_path, fingerprint="ef56" * 16, max_epsilon=2.0) as ledger:  # a new population's table
        assert ledger.spent() == 0.0
    (status,) = read_state(tmp_path)
    (earlier,) = status["earlier_populations"]
    assert earlier["epsilon_spent"] == pytest.approx(spent) and earlier["events"] == 4
    assert status["epsilon_spent"] == 0.0
    assert status["policy_history"][-1]["change"] == "new-population"


def test_a_ledger_without_delta_takes_one_before_its_first_release(tmp_path):
    with open_ledger(tmp_path, delta=None) as ledger:
        assert ledger.delta is None
        ledger.adopt_delta(1e-6)
        ledger.record(some_events()[:1])
    with open_ledger(tmp_path, delta=None) as ledger:  # kept
        assert ledger.delta == 1e-6


def test_unwritable_state_dir_fails_before_anything_is_released(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(PrivacyStateError, match="writable 'state-dir'"):
        open_ledger(blocker / "state")
    # the disk fails while recording: the event is not kept, the file is unchanged
    with open_ledger(tmp_path / "s") as ledger:
        ledger.record(some_events()[:1])
        before = (tmp_path / "s" / "privacy" / "ledger.json").read_bytes()
        import privacy.state_files as files

        def failing_write(path, payload):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(files, "atomic_write_json", failing_write)
        with pytest.raises(PrivacyStateError, match="No space left"):
            ledger.record([PrivacyEvent("train", 2.0, 0.01, 10)])
        assert len(ledger.events) == 1
    assert (tmp_path / "s" / "privacy" / "ledger.json").read_bytes() == before


def test_concurrent_open_from_another_process_is_refused(tmp_path):
    holder = textwrap.dedent(f"""
        import sys, time
        from privacy.accountant import PrivacyLedger
        ledger = PrivacyLedger.open({str(tmp_path)!r}, fingerprint={FP!r}, schema_key="consumer-credit-v1@1",
                                    institution_id="bank-a", max_epsilon=3.0, delta=1e-5)
        print("locked", flush=True)
        sys.stdin.readline()
        ledger.close()
        print("released", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(PrivacyStateError, match=f"locked by another process \\(pid {proc.pid}\\)"):
            open_ledger(tmp_path, lock_timeout=0.3)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        with open_ledger(tmp_path, lock_timeout=5) as ledger:
            assert ledger.spent() == 0.0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


# ------------------------------------------------------------------ property: never over budget
run_strategy = st.tuples(
    st.integers(1, 4),                       # rounds the run plans for
    st.integers(0, 3),                       # extra rounds the coordinator asks for beyond the plan
    st.sampled_from([0.01, 0.05, 0.2, 1.0]),  # sample rate
    st.integers(1, 40),                      # steps per round
    st.booleans(),                           # noised evaluation each round
    st.floats(0.3, 6.0),                     # the node's budget at that time
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(run_strategy, min_size=1, max_size=4))
def test_epsilon_never_exceeds_the_budget(tmp_path_factory, runs):
    state = tmp_path_factory.mktemp("state")
    ev = PrivacyEvent("evaluation", 10.0, 1.0, 1)
    for i, (planned, extra, q, steps, noised_eval, budget) in enumerate(runs):
        with open_ledger(state, max_epsilon=budget) as ledger:
            if i == 0:
                try:
                    ledger.record([PrivacyEvent("statistics", 10.0, 1.0, 1)])
                except BudgetExceeded:
                    pass
            reserve = [ev] * planned if noised_eval else []
            try:
                plan = plan_noise(prior_events=ledger.events, max_epsilon=budget, delta=DELTA, sample_rate=q,
                                  steps_per_round=steps, rounds=planned, extra_events=reserve)
            except BudgetExceeded:  # refused before training: only when nothing useful fits
                event("plan refused")
                huge = [PrivacyEvent("train", 1e3, q, steps)] * planned
                assert (ledger.epsilon_if(reserve) >= budget - 0.01
                        or ledger.epsilon_if(reserve + huge) > budget)
                continue
            assert plan.epsilon_after_round[-1] <= budget
            for r in range(planned + extra):
                n_before = len(ledger.events)
                try:
                    ledger.record([plan.round_event(f"run{i}", r + 1)])
                    if noised_eval:
                        ledger.record([ev])
                except BudgetExceeded:
                    event("round beyond the plan refused")
                    assert r >= planned, "a round inside the plan was refused"
                    assert len(ledger.events) in (n_before, n_before + 1)
                assert ledger.spent() <= budget + 1e-9
        with open_ledger(state, max_epsilon=budget) as check:
            assert check.spent() == pytest.approx(ledger.spent())
            assert check.spent() <= budget + 1e-9
