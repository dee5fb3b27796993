"""Phone-number detection: precision and recall of the PII detector, with and without
libphonenumber (the ``phonenumbers`` package).

    .venv/bin/python bench/pii_phones.py

Two sets:

* ours — the red-team set (tests/data/pii_redteam.jsonl: 180 phone numbers, and other
  PII) and the clean set (tests/data/clean_numbers.jsonl: 300 sentences whose numbers
  are not PII). A phone is caught when every digit of it is inside a finding; a phone
  finding that touches no true phone is a false positive.
* held out — libphonenumber's example numbers (fixed line, mobile, toll free) of every
  region it knows, national and international formats, once after "Call me on" and
  once with no phone word before them. Recall only; not used to tune the rules.

Compared: our rules alone (``PIIDetector()``); ``phonenumbers.PhoneNumberMatcher`` alone
(one region, or the language's region); and our rules with ``phone_regions``, where
libphonenumber settles only the runs our rules cannot tell.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import phonenumbers as pn

from omni_agent.middleware.pii import PIIDetector

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
LANG_REGION = {"en": "US", "de": "DE", "fr": "FR", "es": "ES", "it": "IT", "nl": "NL", "zh": "CN",
               "ja": "JP", "ru": "RU", "pt": "BR"}
SOME_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CN", "JP", "RU", "BR")
Spans = list[tuple[int, int, str]]


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


def true_phones(case: dict) -> list[tuple[int, int]]:
    if not case.get("kind", "").startswith("phone"):
        return []
    values = case["pii"] if isinstance(case["pii"], list) else [case["pii"]]
    out = []
    for v in values:
        if "@" not in v:
            i = case["text"].index(v)
            out.append((i, i + len(v)))
    return out


def caught(text: str, span: tuple[int, int], found: Spans) -> bool:
    return all(any(s <= i < e for s, e, _ in found) for i in range(*span) if text[i].isdigit())


def with_rules(det: PIIDetector) -> Callable[[dict], Spans]:
    return lambda case: [(f.start, f.end, f.kind) for f in det.find(case["text"])]


def with_matcher(region_of: Callable[[dict], str], leniency: int) -> Callable[[dict], Spans]:
    return lambda case: [(m.start, m.end, "phone") for m in
                         pn.PhoneNumberMatcher(case["text"], region_of(case), leniency=leniency)]


def ours(name: str, find: Callable[[dict], Spans], cases: list[dict]) -> None:
    hit = miss = tp = fp = flagged = 0
    t0 = time.perf_counter()
    for case in cases:
        text, truth, found = case["text"], true_phones(case), find(case)
        for span in truth:
            hit, miss = (hit + 1, miss) if caught(text, span, found) else (hit, miss + 1)
        phones = [(s, e) for s, e, k in found if k == "phone"]
        good = sum(1 for s, e in phones if any(s < b and e > a for a, b in truth))
        tp, fp = tp + good, fp + len(phones) - good
        flagged += bool(phones) and "category" in case
    ms = (time.perf_counter() - t0) / len(cases) * 1e3
    precision = tp / (tp + fp) if tp + fp else 0.0
    clean = sum("category" in c for c in cases)
    print(f"{name:48} {hit / (hit + miss):7.3f} {precision:9.3f} {fp:4} {flagged:4}/{clean} {ms:8.3f}")


def held_out() -> list[tuple[str, str, str, str, str]]:
    """(region, context, format, number, sentence) for libphonenumber's example numbers."""
    out = []
    types = (pn.PhoneNumberType.FIXED_LINE, pn.PhoneNumberType.MOBILE, pn.PhoneNumberType.TOLL_FREE)
    formats = {"national": pn.PhoneNumberFormat.NATIONAL,
               "international": pn.PhoneNumberFormat.INTERNATIONAL}
    for region in sorted(pn.SUPPORTED_REGIONS):
        for t in types:
            example = pn.example_number_for_type(region, t)
            if example is None:
                continue
            for fmt_name, fmt in formats.items():
                number = pn.format_number(example, fmt)
                for ctx, tmpl in (("after 'call'", "Call me on {} tomorrow."),
                                  ("no phone word", "The office is {}, ask for Sam.")):
                    out.append((region, ctx, fmt_name, number, tmpl.format(number)))
    return out


def main() -> None:
    cases = load("pii_redteam.jsonl") + load("clean_numbers.jsonl")
    L = pn.Leniency
    print("ours: red-team + clean sets")
    print(f"{'detector':48} {'recall':>7} {'precision':>9} {'fp':>4} {'clean flagged':>9} {'ms/text':>8}")
    ours("our rules (PIIDetector())", with_rules(PIIDetector()), cases)
    for lname, leniency in (("POSSIBLE", L.POSSIBLE), ("VALID", L.VALID)):
        ours(f"PhoneNumberMatcher, US, {lname}", with_matcher(lambda c: "US", leniency), cases)
        ours(f"PhoneNumberMatcher, language's region, {lname}",
             with_matcher(lambda c: LANG_REGION.get(c["lang"], "US"), leniency), cases)
    ours("our rules + phone_regions=['US']", with_rules(PIIDetector(phone_regions=["US"])), cases)
    ours(f"our rules + phone_regions={len(SOME_REGIONS)} countries",
         with_rules(PIIDetector(phone_regions=SOME_REGIONS)), cases)

    print("\nheld out: libphonenumber's example numbers of every region (recall)")
    rules, per_region = PIIDetector(), {}
    total, base, plan = Counter(), Counter(), Counter()
    for region, ctx, fmt, number, text in held_out():
        start = text.index(number)
        span = (start, start + len(number))
        det = per_region.setdefault(region, PIIDetector(phone_regions=[region]))
        key = (fmt, ctx)
        total[key] += 1
        base[key] += caught(text, span, [(f.start, f.end, f.kind) for f in rules.find(text)])
        plan[key] += caught(text, span, [(f.start, f.end, f.kind) for f in det.find(text)])
    print(f"{'numbers':34} {'our rules':>10} {'+ phone_regions=[its country]':>30}")
    for key in sorted(total):
        print(f"{key[0] + ', ' + key[1]:34} {base[key]:4}/{total[key]:<5} {plan[key]:20}/{total[key]}")


if __name__ == "__main__":
    main()
