"""Writes the safety data sets used by tests/test_safety_redteam.py (run once; the
outputs are committed). Deterministic: a fixed seed.

    .venv/bin/python tests/data/make_safety_sets.py

* pii_redteam.jsonl — sentences in several languages, each with one piece of PII of a
  known kind and format: {"id", "kind", "format", "lang", "text", "pii"}.
* clean_numbers.jsonl — sentences whose numbers are not PII (times, prices, years,
  quantities, versions, room and flight numbers, dates, scores, measures):
  {"id", "category", "lang", "text"}.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
rng = random.Random(20261125)


# ----------------------------------------------------------------------------- PII values


def luhn_complete(prefix: str, length: int) -> str:
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return body + str((10 - total % 10) % 10)


def group(s: str, sizes: list[int], sep: str) -> str:
    out, i = [], 0
    for n in sizes:
        out.append(s[i:i + n])
        i += n
    if i < len(s):
        out.append(s[i:])
    return sep.join(p for p in out if p)


def iban(cc: str, bban: str) -> str:
    num = "".join(str(int(c, 36)) for c in bban + cc + "00")
    check = 98 - int(num) % 97
    return f"{cc}{check:02d}{bban}"


PHONES = [
    ("us-paren", "(555) 010-0199"), ("us-dash", "555-010-0199"), ("us-dot", "555.010.0199"),
    ("us-intl", "+1 555 010 0199"), ("us-intl-dash", "+1-555-010-0199"), ("us-tollfree", "1-800-555-0199"),
    ("us-local", "555-0199"), ("us-plain", "5550100199"), ("us-intl-paren", "+1 (555) 010-0199"),
    ("uk-intl", "+44 20 7946 0958"), ("uk-national", "020 7946 0958"), ("uk-mobile", "07700 900123"),
    ("uk-00", "0044 20 7946 0958"), ("de-intl", "+49 30 12345678"), ("de-national", "030 12345678"),
    ("de-mobile", "0151 23456789"), ("de-slash", "030/1234567"), ("de-intl-0", "+49 (0)30 1234567"),
    ("de-dash", "0151-23456789"), ("fr-intl", "+33 1 23 45 67 89"), ("fr-national", "01 23 45 67 89"),
    ("fr-dots", "06.12.34.56.78"), ("es-intl", "+34 612 34 56 78"), ("es-national", "612 34 56 78"),
    ("it-intl", "+39 06 1234 5678"), ("it-mobile", "347 123 4567"), ("nl-intl", "+31 20 123 4567"),
    ("nl-mobile", "06-12345678"), ("cn-intl", "+86 138 1234 5678"), ("cn-mobile", "13812345678"),
    ("cn-landline", "010-12345678"), ("jp-landline", "03-1234-5678"), ("jp-mobile", "090-1234-5678"),
    ("jp-intl", "+81 3-1234-5678"), ("ru-intl", "+7 (495) 123-45-67"), ("ru-national", "8 (495) 123-45-67"),
    ("in-intl", "+91 98765 43210"), ("br-intl", "+55 11 91234-5678"), ("br-national", "(11) 91234-5678"),
    ("au-intl", "+61 2 9876 5432"), ("pl-intl", "+48 512 345 678"), ("kr-mobile", "010-1234-5678"),
    ("e164", "+14155550123"), ("fullwidth", "０９０-１２３４-５６７８"),
    # Written after the rules were tuned (a held-out check).
    ("uk-intl-0", "+44 (0)20 7946 0958"), ("uk-freephone", "0800 123 4567"), ("us-dot-2", "917.555.0123"),
    ("fr-intl-0", "+33 (0)6 12 34 56 78"), ("de-slash-spaced", "089 / 123 456 78"), ("il-intl", "+972-52-123-4567"),
    ("au-mobile", "0412 345 678"), ("us-1-paren", "1 (800) 555-0199"), ("cn-shanghai", "021-6234 5678"),
    ("jp-mobile-spaced", "080 1234 5678"), ("ch-intl", "+41 44 668 18 00"),
]
EMAILS = [
    ("plain", "jane.doe@example.com"), ("plus", "j_smith+news@mail.co.uk"), ("caps", "INFO@Example.ORG"),
    ("subdomain", "first.last@dept.uni-example.edu"), ("digits", "user1984@example.net"),
    ("accented", "josé.garcía@ejemplo.es"), ("umlaut", "jürgen.müller@beispiel.de"),
    ("short", "a@b.io"), ("hyphen", "mary-ann@my-company.com"), ("words-paren", "jane (at) example (dot) com"),
    ("words-bracket", "bob[at]example[dot]org"), ("words-plain", "bob at example dot com"),
    ("percent", "ops%team@example.com"), ("long-tld", "contact@example.technology"),
    ("jp-domain", "x.y_z-1@sub.example.co.jp"), ("de-web", "max.mustermann@web.de"),
]
CARDS = [
    ("visa-spaced", group(luhn_complete("4", 16), [4, 4, 4, 4], " ")),
    ("visa-dashed", group(luhn_complete("4", 16), [4, 4, 4, 4], "-")),
    ("visa-plain", luhn_complete("4", 16)),
    ("visa-13", luhn_complete("4", 13)),
    ("mc-spaced", group(luhn_complete("51", 16), [4, 4, 4, 4], " ")),
    ("mc-2series", group(luhn_complete("2221", 16), [4, 4, 4, 4], " ")),
    ("amex-spaced", group(luhn_complete("37", 15), [4, 6, 5], " ")),
    ("amex-plain", luhn_complete("34", 15)),
    ("discover", group(luhn_complete("6011", 16), [4, 4, 4, 4], " ")),
    ("jcb", group(luhn_complete("35", 16), [4, 4, 4, 4], " ")),
    ("diners-14", group(luhn_complete("36", 14), [4, 6, 4], " ")),
    ("unionpay-19", luhn_complete("62", 19)),
    ("maestro", group(luhn_complete("6759", 16), [4, 4, 4, 4], " ")),
    ("visa-test", "4111 1111 1111 1111"), ("mc-test-dashed", "5105-1051-0510-5100"),
]
IBANS = [
    ("de-spaced", group(iban("DE", "370400440532013000"), [4] * 6, " ")),
    ("de-compact", iban("DE", "500105175407324931")),
    ("gb-spaced", group(iban("GB", "WEST12345698765432"), [4] * 6, " ")),
    ("fr-spaced", group(iban("FR", "20041010050500013M02606"), [4] * 7, " ")),
    ("es-spaced", group(iban("ES", "21000418450200051332"), [4] * 6, " ")),
    ("it-compact", iban("IT", "X0542811101000000123456")),
    ("nl-spaced", group(iban("NL", "ABNA0417164300"), [4] * 5, " ")),
    ("ch-spaced", group(iban("CH", "0076201162385295"[:17].ljust(17, "7")), [4] * 6, " ")),
    ("be-spaced", group(iban("BE", "539007547034"), [4] * 4, " ")),
    ("at-compact", iban("AT", "1904300234573201")),
    ("pl-spaced", group(iban("PL", "109010140000071219812874"), [4] * 7, " ")),
    ("no-short", iban("NO", "86011117947")),
    ("lowercase", iban("DE", "120300000000202051").lower()), ("gb-example", "GB29 NWBK 6016 1331 9268 19"),
]
SSNS = [("dashed", "123-45-6789"), ("spaced", "219 09 9999"), ("dashed-2", "078-05-1120"),
        ("dashed-3", "512-62-0421"), ("keyword-plain", "401234567"),
        ("spaced-2", "123 45 6789")]
IPS = [("v4-private", "192.168.1.20"), ("v4-10", "10.0.0.1"), ("v4-172", "172.16.254.1"),
       ("v4-public", "203.0.113.42"), ("v4-dns", "8.8.8.8"), ("v4-port", "198.51.100.7"),
       ("v6-compressed", "2001:db8::ff00:42:8329"), ("v6-full", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
       ("v6-linklocal", "fe80::1ff:fe23:4567:890a"), ("v6-mapped", "::ffff:192.0.2.128"),
       ("v4-cgnat", "100.64.0.1"), ("v6-doc", "2001:db8::1"),
       ("v6-upper", "2001:DB8:0:0:8:800:200C:417A")]

TEMPLATES = {
    "phone": {
        "en": ["You can call me at {pii} after six.", "My number is {pii}.", "Reach the front desk on {pii}, they are open late.",
               "Sure, the hotline is {pii} and it's free.", "Text {pii} if you are running late."],
        "de": ["Sie erreichen mich unter {pii}.", "Meine Telefonnummer ist {pii}, ruf mich an."],
        "fr": ["Appelez-moi au {pii} demain.", "Mon numéro est le {pii}."],
        "es": ["Llámame al {pii} por la tarde.", "Mi número de teléfono es {pii}."],
        "it": ["Chiamami al {pii} domani.", "Il mio numero è {pii}."],
        "zh": ["我的电话是{pii}，请明天打给我。", "请拨打{pii}联系我们。"],
        "ja": ["電話番号は{pii}です。"],
        "ru": ["Мой телефон {pii}, звоните."],
        "nl": ["Bel me op {pii} morgen."],
        "pt": ["Ligue para {pii} amanhã."],
    },
    "email": {
        "en": ["Write to {pii} and I'll answer.", "My email is {pii}.", "Send the file to {pii}, please."],
        "de": ["Schreib mir an {pii}."], "fr": ["Mon adresse est {pii}."], "es": ["Escríbeme a {pii}."],
        "zh": ["我的邮箱是{pii}。"], "ja": ["メールは{pii}までお願いします。"],
    },
    "card": {
        "en": ["The card number is {pii}, expiring next year.", "I paid with {pii} yesterday.",
               "Charge it to {pii} please."],
        "de": ["Meine Kartennummer lautet {pii}."], "fr": ["Ma carte est la {pii}."],
        "es": ["El número de la tarjeta es {pii}."], "zh": ["卡号是{pii}。"],
    },
    "iban": {
        "en": ["Transfer it to {pii} by Friday.", "My IBAN is {pii}."],
        "de": ["Bitte überweisen Sie auf {pii}."], "fr": ["Mon IBAN est {pii}."],
        "es": ["Mi IBAN es {pii}."], "it": ["L'IBAN è {pii}."], "nl": ["Mijn IBAN is {pii}."],
    },
    "ssn": {
        "en": ["My social security number is {pii}.", "SSN {pii} is on the form.", "Her SSN: {pii}."],
    },
    "ip": {
        "en": ["The server is at {pii} on the office network.", "Connect to {pii} with SSH.",
               "Requests came from {pii} all night."],
        "de": ["Der Server hat die Adresse {pii}."], "fr": ["Le serveur est à l'adresse {pii}."],
        "zh": ["服务器地址是{pii}。"],
    },
}


def redteam() -> list[dict]:
    values = {"phone": PHONES, "email": EMAILS, "card": CARDS, "iban": IBANS, "ssn": SSNS, "ip": IPS}
    cases = []
    for kind, vals in values.items():
        tpls = [(lang, t) for lang, ts in TEMPLATES[kind].items() for t in ts]
        for i, (fmt, v) in enumerate(vals):
            # Each value in several languages/templates; keyword-only formats get a
            # template that names the kind.
            picks = [tpls[(i * 3 + k) % len(tpls)] for k in range(3)]
            if fmt == "keyword-plain":
                picks = [("en", "My social security number is {pii}."), ("en", "SSN {pii} is on the form.")]
            for lang, t in picks:
                cases.append({"kind": kind, "format": fmt, "lang": lang, "text": t.format(pii=v), "pii": v})
    # Two pieces of PII in one sentence, of different kinds.
    for i in range(12):
        (_, p), (_, e) = PHONES[i * 3 % len(PHONES)], EMAILS[i % len(EMAILS)]
        cases.append({"kind": "phone+email", "format": "mixed", "lang": "en",
                      "text": f"Call {p} or write to {e}.", "pii": [p, e]})
    seen, out = set(), []
    for c in cases:
        if c["text"] not in seen:
            seen.add(c["text"])
            c["id"] = len(out)
            out.append(c)
    return out


# ----------------------------------------------------------------------------- clean set

CLEAN_FIXED = [
    ("time", "en", "The meeting starts at 10:30 and ends at 11:45."),
    ("time", "en", "Breakfast is served from 7:00 to 10:00 am."),
    ("time", "en", "The train leaves at 6 pm sharp."),
    ("time", "de", "Der Zug fährt um 14:05 Uhr ab."),
    ("time", "fr", "Le magasin ouvre à 9h30 et ferme à 19h."),
    ("time", "en", "The race took 2:03:45 to finish."),
    ("price", "en", "A coffee costs $3.50 and a sandwich $7.25."),
    ("price", "en", "The laptop is on sale for $1,299.99 this week."),
    ("price", "de", "Das Ticket kostet 49,90 € im Monat."),
    ("price", "en", "Tickets range from £12 to £85."),
    ("price", "fr", "Le menu est à 24,50 € par personne."),
    ("price", "en", "The house sold for $1,250,000 last year."),
    ("price", "en", "Shipping is 4.99 USD per order."),
    ("price", "ja", "このお弁当は980円です。"),
    ("year", "en", "The company was founded in 1998 and went public in 2004."),
    ("year", "en", "Between 1990 and 2000 the population doubled."),
    ("year", "en", "The war lasted from 1939-1945."),
    ("year", "en", "Sales grew every year from 2015–2023."),
    ("year", "de", "Im Jahr 2019 wurde das Gebäude renoviert."),
    ("year", "zh", "这座桥建于1937年。"),
    ("quantity", "en", "We shipped 12,500 units in March."),
    ("quantity", "en", "The stadium holds 80 000 people."),
    ("quantity", "fr", "La ville compte 1 234 567 habitants."),
    ("quantity", "de", "Es kamen 1.234.567 Besucher."),
    ("quantity", "en", "The recipe needs 250 g of flour and 3 eggs."),
    ("quantity", "en", "Add 2 1/2 cups of water."),
    ("quantity", "en", "There are 365 days in a year and 24 hours in a day."),
    ("version", "en", "Upgrade to Python 3.11.4 before Friday."),
    ("version", "en", "The fix landed in version 2.14.0."),
    ("version", "en", "Windows build 10.0.19041.1 is supported."),
    ("version", "en", "We still run Node v18.17.1 in production."),
    ("version", "en", "Firmware 4.2.1-rc3 is out."),
    ("room", "en", "Your room is 512 on the fifth floor."),
    ("room", "en", "The seminar is in room B-214."),
    ("room", "de", "Das Meeting ist in Raum 3.14."),
    ("flight", "en", "Flight UA 1234 departs from gate 42."),
    ("flight", "en", "Your flight LH 456 boards at 9:15."),
    ("flight", "en", "Train ICE 597 is running 10 minutes late."),
    ("date", "en", "The deadline is 2024-05-01."),
    ("date", "en", "Her birthday is on 12/05/1990."),
    ("date", "de", "Der Termin ist am 01.05.2024."),
    ("date", "en", "The conference runs 3–5 June 2025."),
    ("score", "en", "The final score was 3-2 after extra time."),
    ("score", "en", "They won 24 to 17."),
    ("measure", "en", "It is 42 km from here and about 20°C today."),
    ("measure", "en", "The screen is 15.6 inches with a 2560x1440 resolution."),
    ("measure", "en", "Set the oven to 180 degrees for 45 minutes."),
    ("measure", "en", "The file is 3.5 GB and downloads at 100 Mbps."),
    ("percent", "en", "Inflation fell to 2.4% in April."),
    ("percent", "de", "Die Quote liegt bei 12,5 %."),
    ("math", "en", "Pi is roughly 3.14159265."),
    ("math", "en", "The answer is 1024 divided by 8, which is 128."),
    ("math", "en", "Multiply 12 by 12 to get 144."),
    ("coords", "en", "The coordinates are 48.8566, 2.3522."),
    ("page", "en", "See pages 120-135 of the report."),
    ("page", "en", "Chapter 7, paragraph 3, line 12."),
    ("id", "en", "Your order 48213 has shipped."),
    ("id", "en", "Ticket #4821 was closed."),
    ("age", "en", "My grandmother turned 97 last week."),
    ("address", "en", "The museum is at 221B Baker Street."),
    ("zip", "en", "The zip code is 94103."),
    ("sports", "en", "He ran 100 m in 9.58 seconds."),
    ("sports", "en", "The marathon is 42.195 km long."),
    ("money", "en", "The budget grew from 1.2 million to 3.4 million dollars."),
    ("money", "en", "Revenue was $4.5bn in 2023."),
    ("list", "en", "Pick 1, 2 or 3."),
    ("list", "en", "The lucky numbers are 7, 13, 21 and 42."),
    ("ratio", "en", "Mix it 1:3 with water."),
    ("time", "en", "The video is 1:32:10 long."),
    ("date", "en", "From 10/01/2023 to 12/31/2023 the shop was closed."),
    ("quantity", "en", "About 7,500,000 people live there."),
    ("temperature", "en", "It dropped to -12 °C overnight."),
    ("version", "en", "iOS 17.4.1 fixes the bug."),
    ("code", "en", "HTTP status 404 means not found, 500 is a server error."),
    ("channel", "en", "Tune in to 98.7 FM."),
    ("model", "en", "The Boeing 747-400 has four engines."),
    ("model", "en", "I drive a 2018 Model 3."),
    ("phone-like-no", "en", "The population rose from 8 million to 9 million."),
    ("sports", "en", "They scored 101 points in the 4th quarter."),
    ("price", "es", "El billete cuesta 35 € ida y vuelta."),
    ("time", "es", "La reunión es a las 16:30."),
    ("year", "fr", "La tour a été construite en 1889."),
    ("quantity", "it", "Ci sono 3.500 posti a sedere."),
    ("price", "zh", "这本书售价128元。"),
    ("time", "zh", "会议在下午3点开始。"),
    ("year", "ja", "2020年に東京でオリンピックが予定されていました。"),
    ("quantity", "ru", "В городе живёт 12 миллионов человек."),
    ("room", "fr", "La chambre 204 est au deuxième étage."),
    ("flight", "de", "Der Flug LH 2024 landet um 18:40."),
    ("date", "fr", "Rendez-vous le 14/07/2024."),
    # Harder ones: long identifiers and number pairs that look like phone numbers.
    ("id", "en", "Your order number is 1234567890."),
    ("id", "en", "The ISBN is 9780306406157."),
    ("id", "en", "Invoice 2024-0042 is paid."),
    ("id", "en", "Tracking code 1Z999AA10123456784 shows it in transit."),
    ("quantity", "en", "Between 100-2000 people attend each year."),
    ("quantity", "en", "In 2023 500 people signed up."),
    ("time", "en", "The timestamp is 2024-05-01 10:30:00 UTC."),
    ("math", "en", "The first digits of pi are 3.1415926535."),
    ("money", "en", "The national debt is 34,000,000,000,000 dollars."),
    ("version", "en", "Build 1.2.3.4 is the last release."),
    ("id", "en", "Reference 2023/11/45 in the file."),
    ("date", "en", "On 2024.05.01 the office reopened."),
    ("measure", "en", "The part measures 10.25 x 20.50 x 5.00 mm."),
    ("id", "en", "Case number 12345-6789 was closed."),
    # Written after the rules were tuned, and not tuned against (a held-out check).
    ("held-out", "en", 'Serial 4829104823 is under warranty.'),
    ("held-out", "en", 'Route 66 runs 2,448 miles.'),
    ("held-out", "en", 'The 4-4-2 formation won.'),
    ("held-out", "en", 'Version 10.0.22631 is current.'),
    ("held-out", "en", 'Order #98765432101 shipped today.'),
    ("held-out", "en", 'The PIN pad shows 1234.'),
    ("held-out", "en", 'Between 1,000-2,000 fans came.'),
    ("held-out", "en", 'Gate B12, seat 14C, row 22.'),
    ("held-out", "en", 'The price went from 99.99 to 149.99.'),
    ("held-out", "en", 'Temperatures between 15-25 degrees.'),
    ("held-out", "en", 'The year 2000 problem was overblown.'),
    ("held-out", "en", 'It was 1-0 at half time and 2-1 at the end.'),
    ("held-out", "en", 'Add 1 500 ml of water.'),
    ("held-out", "en", 'Population: 8 336 817.'),
    ("held-out", "en", 'The code 200 OK came back in 35 ms.'),
    ("held-out", "en", 'Apollo 11 landed on 20 July 1969.'),
    ("held-out", "en", 'The bill was 1 234,56 € in total.'),
    ("held-out", "en", 'Take exit 23B towards Route 9.'),
    ("held-out", "en", 'We moved in 2019, 2021 and 2023.'),
    ("held-out", "en", 'Dial-up modems ran at 56 kbps.'),
    ("held-out", "en", 'Between 9 and 5 we work.'),
    ("held-out", "en", 'Call 911 in an emergency.'),
    ("held-out", "en", 'Call center hours are 8-17.'),
    ("held-out", "en", 'He scored 25 12 and 7 in the three games.'),
    ("held-out", "en", 'Product SKU 100200300 is out of stock.'),
    ("held-out", "en", 'Sold 1.5 million copies in 2022.'),
    ("held-out", "en", 'Coordinates 40.7128 N, 74.0060 W.'),
    ("held-out", "en", 'In 1995 1996 and 1997 it rained.'),
    ("held-out", "en", 'Chapter 12 13 14 are missing.'),
    ("held-out", "en", 'Room 1203 1204 are booked.'),
]


CLEAN_TEMPLATES = {
    "time": ["The store opens at {h}:{m:02d}.", "Let's meet at {h}:{m:02d} tomorrow.", "The bus comes at {h}:{m:02d} and {h2}:{m2:02d}."],
    "price": ["It costs ${a}.{c:02d}.", "The total is €{a},{c:02d}.", "A ticket is {a} dollars.", "They paid ${big:,} for it."],
    "year": ["It happened in {y}.", "From {y} to {y2} things changed.", "The {y} model is better."],
    "quantity": ["We need {q} chairs and {q2} tables.", "The book has {q} pages.", "There were {big:,} visitors."],
    "version": ["Install version {v1}.{v2}.{v3}.", "Release {v1}.{v2} fixed it.", "Upgrade from {v1}.{v2} to {v1}.{v3}."],
    "room": ["Go to room {r}.", "The lab is room {r} in building {b}.", "Suite {r} is ready."],
    "flight": ["Flight {al} {f} is on time.", "Board flight {al}{f} at gate {g}.", "{al} {f} was cancelled."],
    "measure": ["Walk {q} meters and turn left.", "It weighs {q} kg.", "The tank holds {q} liters."],
    "date": ["The event is on {y}-{mo:02d}-{d:02d}.", "Due {mo}/{d}/{y}."],
    "percent": ["Battery is at {p}%.", "Growth was {p}.{c}% last quarter."],
}
AIRLINES = ["UA", "LH", "BA", "AF", "DL", "KL", "NH", "QF"]


def clean() -> list[dict]:
    out = [{"category": c, "lang": l, "text": t} for c, l, t in CLEAN_FIXED]
    seen = {o["text"] for o in out}
    cats = list(CLEAN_TEMPLATES)
    while len(out) < 300:
        cat = cats[len(out) % len(cats)]
        t = rng.choice(CLEAN_TEMPLATES[cat])
        vals = dict(h=rng.randrange(1, 24), m=rng.randrange(60), h2=rng.randrange(1, 24), m2=rng.randrange(60),
                    a=rng.randrange(1, 500), c=rng.randrange(100), big=rng.randrange(1000, 5_000_000),
                    y=rng.randrange(1900, 2030), y2=rng.randrange(1900, 2030), q=rng.randrange(2, 900),
                    q2=rng.randrange(2, 50), v1=rng.randrange(0, 20), v2=rng.randrange(0, 30),
                    v3=rng.randrange(0, 30), r=rng.randrange(100, 1300), b=rng.choice("ABCDE"),
                    al=rng.choice(AIRLINES), f=rng.randrange(10, 9999), g=rng.randrange(1, 80),
                    mo=rng.randrange(1, 13), d=rng.randrange(1, 29), p=rng.randrange(1, 100))
        text = t.format(**vals)
        if text not in seen:
            seen.add(text)
            out.append({"category": cat, "lang": "en", "text": text})
    for i, o in enumerate(out):
        o["id"] = i
    return out


def write(name: str, rows: list[dict]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    write("pii_redteam.jsonl", redteam())
    write("clean_numbers.jsonl", clean())
