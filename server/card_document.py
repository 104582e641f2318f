"""The model card laid out as text, once, for both of its renderings.

:func:`card_document` turns the card data of :func:`server.model_card.build_model_card` into a
:class:`CardDocument`: titled sections of blocks — paragraphs, bullet lists, sub-headings and
tables of plain strings, and text charts. Two templates render the same document:

* ``model_card.md`` (:func:`render_markdown`, template ``model_card.md.j2``): every section;
* the report's "Model card" section (template ``report/model-card.html.j2``): the sections in
  :data:`REPORT_SECTIONS`; the report's privacy and fairness sections show the card's tables
  (:attr:`CardDocument.parts`) next to their figures.

Text carries two inline marks, written as in Markdown: ```code``` and ``**strong**``. The HTML
rendering escapes the text first and only then turns the marks into ``<code>`` / ``<strong>``
(the ``inline`` filter of :mod:`server.templating`), so no string from a run can inject markup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.formatting import general, num, percent

#: sections of the card the report shows in its own "Model card" section (privacy, performance
#: and fairness have report sections of their own)
REPORT_SECTIONS = ("model", "intended-use", "training", "audit")


@dataclass(frozen=True)
class Paragraph:
    """A paragraph; ``style``: ``""``, ``"note"`` (set in italics) or ``"absent"`` (data the run lacks)."""

    text: str
    style: str = ""
    kind: str = "paragraph"


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]
    strong: bool = False
    kind: str = "bullets"


@dataclass(frozen=True)
class Heading:
    """A sub-heading inside a section."""

    text: str
    kind: str = "heading"


@dataclass(frozen=True)
class Table:
    """A table of strings; the first ``text_cols`` columns are text (left-aligned in HTML)."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    text_cols: int = 1
    kind: str = "table"


@dataclass(frozen=True)
class Preformatted:
    """Lines set as they are, in a fixed-width font (a text chart)."""

    lines: tuple[str, ...]
    kind: str = "preformatted"


Block = Paragraph | Bullets | Heading | Table | Preformatted


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class CardDocument:
    title: str
    byline: str
    sections: tuple[Section, ...]
    #: blocks the report shows elsewhere: ``"privacy-table"``, ``"fairness:<attribute>"`` (a
    #: (paragraph, table) pair)
    parts: dict = field(default_factory=dict)

    def section(self, key: str) -> Section | None:
        return next((s for s in self.sections if s.key == key), None)

    def report_sections(self) -> list[Section]:
        return [s for s in self.sections if s.key in REPORT_SECTIONS]


def _table(header: list[str], rows: list[list[str]], text_cols: int = 1) -> Table:
    return Table(tuple(header), tuple(tuple(str(c) for c in r) for r in rows), text_cols)


# ------------------------------------------------------------------------------ sections
def model_section(card: dict) -> Section:
    run, model, sch = card["run"], card["model"], card["schema"]
    scale = model.get("score_scale") or {}
    schema = f"{sch['key']} (name {sch.get('name', '—')}, version {sch.get('version', '—')})"
    if sch.get("description"):
        schema += f" — {sch['description']}"
    status = f"{run['run_id']} ({run['mode']}), status {run['status']}, {run['rounds_completed']} of " \
             f"{run['rounds_planned']} rounds"
    if run.get("stop_reason"):
        status += f" — stopped: {run['stop_reason']} ({run['stop_detail']})"
    rows = [
        ["architecture", f"{model['architecture']}" + (f" (hidden layers {model['hidden_layers']})"
                                                       if model.get("hidden_layers") else "")],
        ["inputs", f"{model.get('n_inputs') or '—'} encoded columns of the schema's model features"],
        ["output", model["output"]],
        ["schema", schema],
        ["schema fingerprint", f"`{sch.get('fingerprint') or '—'}`"],
        ["weights sha256", f"`{model.get('weights_sha256') or '—'}`"],
        ["score scale", (f"{scale.get('base_score', 600):g} points at odds {scale.get('base_odds', 50):g}:1, "
                         f"+{scale.get('pdo', 20):g} points per doubling of the odds") if scale else "—"],
        ["cut-off PD", general(model.get("cutoff_pd"))],
        ["run", status],
    ]
    return Section("model", "Model", (_table(["field", "value"], rows, text_cols=2),))


def intended_use_section(card: dict) -> Section:
    iu = card["intended_use"]
    return Section("intended-use", "Intended use", (
        Paragraph(iu["purpose"]), Paragraph(f"**Users:** {iu['users']}"), Paragraph("**Limits and caveats:**"),
        Bullets(tuple(iu["limitations"]))))


def update_checks_sentence(t: dict) -> str:
    """What the server checked of each update (server/update_checks.py) and its norm settings."""
    if t.get("secure_aggregation"):
        return ("Updates were combined by secure aggregation (SecAgg+): the server saw only their sum, so it "
                "checked no individual update.")
    norm = (f"an L2 distance from the global model of at most {num(t['max_update_norm'], 3)}"
            if t.get("max_update_norm") else "no norm bound (max-update-norm = 0)")
    clip = (f"; each update's delta clipped to norm {num(t['clip_update_norm'], 3)} before aggregation"
            if t.get("clip_update_norm") else "")
    return f"Every update was checked for shape, dtype and finite values, with {norm}{clip}."


def training_section(card: dict) -> Section:
    t = card["training"]
    rows = [[inst, num(d["rows_train"]), num(d.get("rows_holdout")), percent(d["default_rate"]),
             d["evaluation_release"]] for inst, d in card["data"]["institutions"].items()]
    return Section("training", "Training", (
        Paragraph(f"Federated training with {t['strategy']} ({t['aggregation']} aggregation), {t['rounds']} round(s), "
                  f"{t['local_epochs']} local epoch(s) per round, batch size {t['batch_size']}, {t['optimizer']} at "
                  f"learning rate {t['learning_rate']}, seed {t['seed']}; differential privacy: "
                  f"{'yes' if t['dp'] else 'NO'}."),
        Paragraph(update_checks_sentence(t)),
        Heading("Training data per institution"),
        Paragraph(f"Source: {card['data']['source']}. The default rate is shown only where the institution "
                  "releases it exactly (simulation, or `release-eval = exact`)."),
        _table(["institution", "training rows", "holdout rows", "default rate", "evaluation release"], rows)))


def privacy_state_text(row: dict) -> str:
    """ε recomputed from the node's privacy state, and whether it matches what the node reported."""
    st = row.get("state")
    if st is None:
        return "held by the institution"
    if "error" in st:
        return f"state error: {st['error']}"
    if st.get("epsilon_spent") is None:
        return st.get("note", "not available")
    ok = row.get("state_matches")
    return f"{num(st['epsilon_spent'])} ({'matches' if ok else 'MISMATCH'})"


def privacy_table(p: dict) -> Table:
    return _table(["institution", "ε spent", "ε budget", "δ", "accountant", "σ (noise multiplier)", "sample rate",
                   "ε from node state"],
                  [[inst, num(r["epsilon_spent"]), general(r["epsilon_budget"]), general(r["delta"]),
                    r["accountant"] or "—", num(r["noise_multiplier"], 3), num(r["sample_rate"], 4),
                    privacy_state_text(r)] for inst, r in p["institutions"].items()])


def privacy_section(card: dict) -> Section:
    p = card["privacy"]
    if not p["dp"]:
        return Section("privacy", "Privacy guarantee", (
            Paragraph("**No differential privacy**: this run trained without DP-SGD; no ε applies."),))
    return Section("privacy", "Privacy guarantee", (
        Paragraph(f"Unit of privacy: {p['unit']}. Mechanism: {p['mechanism']}; clipping norm "
                  f"{num(p['clipping_norm'], 3)}. ε is each institution's lifetime spend on its dataset "
                  "(all releases, all runs) at its δ."),
        privacy_table(p)))


def _global_sentence(g: dict) -> str:
    n_sd = g.get("n_sd")
    return (f"Global (pooled holdouts, n = {num(int(g.get('n') or 0))}"
            + (f" ± {num(int(round(n_sd)))}" if isinstance(n_sd, (int, float)) else "")
            + f"): AUC {num(g.get('auc'), sd=g.get('auc_sd'))}, "
            f"Gini {num(g.get('gini'), sd=g.get('gini_sd'))}, KS {num(g.get('ks'), sd=g.get('ks_sd'))}, "
            f"Brier {num(g.get('brier'), sd=g.get('brier_sd'))}, mean PD {percent(g.get('mean_pd'), g.get('mean_pd_sd'))} "
            f"vs observed default rate {percent(g.get('default_rate'), g.get('default_rate_sd'))}.")


def performance_section(card: dict) -> Section:
    m = card["metrics"]
    g = m["global"] or {}
    blocks: list[Block] = []
    if g:
        blocks.append(Paragraph(_global_sentence(g)))
        if g.get("auc_sd") is not None:
            blocks.append(Paragraph(
                "Figures with ± are computed from DP-noised evaluation releases: ± is the noise's standard "
                "deviation (the figures are clipped to their valid ranges). Certify a model on an exact "
                "evaluation, not on these."))
    else:
        blocks.append(Paragraph("No global evaluation was released in this run."))
    if m["baselines_available"]:
        blocks.append(Paragraph(
            f"Baselines on the same splits: centralised (pooled data, non-private) AUC "
            f"{num(m['centralised_pooled_auc'])}; local-only mean AUC {num(m['local_only_mean_auc'])}"
            f"{' (DP at the same budget)' if m.get('local_only_dp') else ''}."))
    else:
        blocks.append(Paragraph("No centralised or local-only baselines (they are trained by `fedcredit simulate`)."))
    blocks.append(_table(
        ["institution", "AUC federated", "AUC local-only", "AUC centralised", "KS", "Brier", "release"],
        [[inst, num(r["federated"].get("auc"), sd=r["federated"].get("auc_sd")), num(r["local_only_auc"]),
          num(r["centralised_auc"]), num(r["federated"].get("ks"), sd=r["federated"].get("ks_sd")),
          num(r["federated"].get("brier"), sd=r["federated"].get("brier_sd")), r["release"] or "—"]
         for inst, r in m["institutions"].items()]))
    blocks.append(Paragraph(f"{m['note']}.", style="note"))
    blocks += member_gain_blocks(m)
    return Section("performance", "Performance", tuple(blocks))


def member_gain_chart(rows: dict[str, dict]) -> list[str]:
    """A text bar per member: gain from joining (chosen − local-only AUC), 20 characters for the
    largest gain (at least 0.02), bars right of ``|`` for a gain, left of it for a loss."""
    scale = max(0.02, max(abs(r["gain_from_joining"]) for r in rows.values()))
    width = max(len(inst) for inst in rows)
    lines = []
    for inst, r in rows.items():
        g = r["gain_from_joining"]
        bar = "█" * max(1 if g else 0, round(20 * abs(g) / scale))
        lines.append(f"{inst:<{width}}  {g:+.3f}  " + (" " * 20 + "|" + bar if g >= 0 else
                                                       " " * (20 - len(bar)) + bar + "|") +
                     f"  ({r.get('chosen_model') or '—'})")
    return lines


def member_gain_blocks(m: dict) -> list[Block]:
    """The card's per-member gain chart (none when the run scored no personal models)."""
    rows = {inst: r for inst, r in m["institutions"].items() if r.get("gain_from_joining") is not None}
    if not rows:
        return []
    worse = m.get("members_worse_than_local_only")
    return [Heading("Gain from joining, per member"),
            Paragraph("AUC of the model each member would use — the shared model or its own personalised one, "
                      "whichever ranks its holdout better — minus the AUC of its local-only model (trained alone, DP "
                      "at the same budget). Bars to the right: the member gains from joining."),
            Preformatted(tuple(member_gain_chart(rows))),
            Paragraph(f"Members worse off than alone (by more than {m.get('gain_tolerance') or 0.005:g} AUC): "
                      f"{'—' if worse is None else worse}.")]


def fairness_attribute(attribute: dict) -> tuple[Paragraph, Table]:
    """The parity sentence and the per-group table of one protected attribute."""
    a = attribute
    sentence = Paragraph(
        f"Demographic-parity difference **{num(a.get('demographic_parity_difference'), 3, a.get('demographic_parity_difference_sd'))}**; "
        f"equal-opportunity difference **{num(a.get('equal_opportunity_difference'), 3, a.get('equal_opportunity_difference_sd'))}**.")
    table = _table(["group", "rows", "defaults", "approval rate", "TPR (defaulters declined)",
                    "FPR (good borrowers declined)"],
                   [[g["group"], f"{int(g['n']):,}", f"{int(g['defaults']):,}",
                     percent(g["approval_rate"], g.get("approval_rate_sd")), percent(g["tpr"], g.get("tpr_sd")),
                     percent(g["fpr"], g.get("fpr_sd"))] for g in a["groups"]])
    return sentence, table


def fairness_section(card: dict) -> tuple[Section, dict]:
    fa = card.get("fairness")
    if not fa or not fa.get("attributes"):
        return Section("fairness", "Fairness", (Paragraph("No fairness counts were released in this run."),)), {}
    blocks: list[Block] = [Paragraph(
        f"At the cut-off PD {general(fa['cutoff_pd'])}; approval = PD below the cut-off. Demographic-parity "
        "difference = max − min approval rate over the groups; equal-opportunity difference = max − min "
        "approval rate among borrowers who did not default.")]
    parts = {}
    for attr, a in fa["attributes"].items():
        parts[f"fairness:{attr}"] = fairness_attribute(a)
        blocks += [Heading(attr), *parts[f"fairness:{attr}"]]
    return Section("fairness", "Fairness", tuple(blocks)), parts


def audit_section(card: dict) -> Section:
    led = card.get("ledger")
    if not led:
        return Section("audit", "Audit", (Paragraph("This run has no audit ledger head in metrics.json.",
                                                    style="absent"),))
    blocks = [Paragraph(
        f"Head hash of the signed audit ledger: `{led['head'] or '—'}` ({led.get('entries') or '?'} entries, "
        f"operator key id `{led.get('key_id') or '—'}`, file `{led.get('path') or 'ledger.jsonl'}`). Every node "
        "keeps the heads it was shown; `fedcredit ledger verify` checks the chain.")]
    v = led.get("verification")
    if v and v.get("ok"):
        note = f" ({v['note']})" if v.get("note") else ""
        blocks.append(Paragraph(f"When this card was written the ledger verified: {v['entries']} entries, hashes and "
                                f"signatures under key `{v.get('key_id')}`, the head above on the chain{note}."))
    elif v:
        blocks.append(Paragraph(f"**The ledger does NOT verify:** {v.get('reason')}"))
    return Section("audit", "Audit", tuple(blocks))


# ------------------------------------------------------------------------------ document
def card_document(card: dict) -> CardDocument:
    """The card laid out as sections of text blocks (see the module docstring)."""
    run = card["run"]
    warnings = ([Section("warnings", "Warnings", (Bullets(tuple(card["warnings"]), strong=True),))]
                if card.get("warnings") else [])
    fairness, fairness_parts = fairness_section(card)
    sections = (*warnings, model_section(card), intended_use_section(card), training_section(card),
                privacy_section(card), performance_section(card), fairness, audit_section(card))
    parts = {"privacy-table": privacy_table(card["privacy"]), **fairness_parts}
    return CardDocument(title=f"Model card — consortium credit-default model (run {run['run_id']})",
                        byline=f"Generated {card['generated']} from `{run['run_dir']}`.",
                        sections=sections, parts=parts)


def render_markdown(card: dict) -> str:
    """``model_card.md``: the card's document as Markdown (no trailing newline)."""
    from server.templating import render

    return render("model_card.md.j2", doc=card_document(card)).rstrip("\n")
