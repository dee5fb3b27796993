"""Retrieval latency and ingest throughput of the vector memory.

    .venv/bin/python bench/retrieval.py                  # 10,000 chunks, embedded Chroma
    .venv/bin/python bench/retrieval.py --server         # also through a `chroma run` server
    .venv/bin/python bench/retrieval.py --reuse DIR      # keep/reuse the built store in DIR

Prints:
* ingest throughput (chunks/s) of the real pipeline — read markdown files, chunk, embed with
  the bundled all-MiniLM-L6-v2, upsert into Chroma — with the model already loaded;
* retrieval latency p50/p90/p99 of ``VectorMemory.search(query, k)`` at N chunks, query
  embedding included (target: p50 <= 15 ms), and its two parts (embedding, index lookup).

The corpus is synthetic but varied (made-up places, people, times and prices in
sentences like the example docs); queries ask about facts in it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

PLACES = ["museum", "ferry", "library", "bakery", "observatory", "harbour", "market", "theatre",
          "garden", "tower", "bridge", "school", "station", "bathhouse", "lighthouse", "mill"]
SYLLABLES = ["zor", "blax", "vel", "lum", "tide", "krin", "dle", "quill", "mere", "bra", "sk",
             "ori", "del", "tam", "sin", "vra", "hob", "ten", "nick", "mar", "row", "gull", "pim"]
THINGS = ["copper birds", "glass lanterns", "paper boats", "clockwork fish", "silver keys",
          "purple tea", "stone owls", "wooden maps", "brass telescopes", "woollen hats"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def section(rng: random.Random) -> tuple[str, str]:
    """One markdown section (~400-600 characters) and a question it answers."""
    town, place, person = name(rng), rng.choice(PLACES), f"{name(rng)} {name(rng)}"
    title = f"The {town} {place}"
    opens = f"{rng.randint(6, 11)}:{rng.randint(0, 59):02d} am"
    closes = f"{rng.randint(1, 9)}:{rng.randint(0, 59):02d} pm"
    price = rng.randint(2, 40)
    thing = rng.choice(THINGS)
    text = (f"## {title}\n\n"
            f"The {town} {place} stands at the end of {name(rng)} Lane in the old quarter. "
            f"It opens at {opens} and closes at {closes}, except on {rng.choice(DAYS)}s. "
            f"Entry costs {price} glimmers; children enter for {rng.randint(0, price)} glimmers. "
            f"The keeper of the {place} is {person}, who collects {thing} and has done so "
            f"since {rng.randint(1850, 2020)}. Visitors often ask about the {rng.choice(THINGS)} "
            f"in the hall, which came from {name(rng)} in {rng.randint(1700, 1990)}.\n")
    question = rng.choice([f"When does the {town} {place} open?",
                           f"Who is the keeper of the {town} {place}?",
                           f"How much does entry to the {town} {place} cost?"])
    return text, question


def write_corpus(folder: Path, chunks: int, per_file: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    questions = []
    for f in range((chunks + per_file - 1) // per_file):
        parts = []
        for _ in range(min(per_file, chunks - f * per_file)):
            text, q = section(rng)
            parts.append(text)
            questions.append(q)
        (folder / f"doc{f:05d}.md").write_text("\n".join(parts))
    return questions


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def measure(memory, queries: list[str], k: int) -> dict[str, float]:
    for q in queries[:10]:  # warm-up
        memory.search(q, k)
    total, embed, lookup = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        vec = memory.embedding.embed_one(q)
        t1 = time.perf_counter()
        memory.collection.query(query_embeddings=[vec], n_results=k, include=["documents", "metadatas", "distances"])
        t2 = time.perf_counter()
        embed.append(t1 - t0)
        lookup.append(t2 - t1)
        t3 = time.perf_counter()
        memory.search(q, k)  # the public call, end to end
        total.append(time.perf_counter() - t3)
    ms = 1000
    return {"p50": statistics.median(total) * ms, "p90": percentile(total, 90) * ms,
            "p99": percentile(total, 99) * ms, "embed_p50": statistics.median(embed) * ms,
            "lookup_p50": statistics.median(lookup) * ms}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("-k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for embedding")
    ap.add_argument("--reuse", type=Path, help="directory to keep the built store in (and reuse)")
    ap.add_argument("--server", action="store_true", help="also measure through a Chroma server")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from omni_agent.memory import MiniLMEmbedding, VectorMemory, ingest

    work = args.reuse or Path(tempfile.mkdtemp(prefix="omni-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    corpus.mkdir(exist_ok=True)
    questions = write_corpus(corpus, args.chunks, per_file=20, seed=args.seed)
    rng = random.Random(args.seed + 1)
    queries = [rng.choice(questions) for _ in range(args.queries)]

    emb = MiniLMEmbedding(threads=args.threads)
    t0 = time.perf_counter()
    emb.load()
    print(f"embedding model load: {time.perf_counter() - t0:.1f} s (threads={args.threads})")
    memory = VectorMemory("bench", data_dir=work / "chroma", embedding=emb)
    report = ingest([corpus], memory, chunk_size=800, overlap=0, progress=True)
    if report.errors:
        print("ingest errors:", report.errors)
        return 1
    print(f"ingest: {report.summary()}")
    if report.embedded:
        print(f"ingest throughput: {report.chunks_per_s:.1f} chunks/s "
              f"({report.embedded} chunks, read+chunk+embed+upsert, model loaded)")
    n = memory.count()
    res = measure(memory, queries, args.k)
    print(f"retrieval at {n} chunks, k={args.k}, {len(queries)} queries (embedded Chroma): "
          f"p50 {res['p50']:.2f} ms, p90 {res['p90']:.2f} ms, p99 {res['p99']:.2f} ms "
          f"(query embedding p50 {res['embed_p50']:.2f} ms, index lookup p50 {res['lookup_p50']:.2f} ms) "
          f"-> target p50 <= 15 ms: {'met' if res['p50'] <= 15 else 'NOT met'}")
    hits = sum(memory.search(q, 1)[0].text.split("\n")[0].split("The ")[-1] in q for q in queries[:50])
    print(f"sanity: top-1 passage names the asked place for {hits}/50 queries")

    if args.server:
        from omni_agent.memory.testing import ChromaServer

        with ChromaServer(work / "server") as server:
            remote = VectorMemory("bench", url=server.url, embedding=emb)
            if remote.count() < n:
                got = memory.collection.get(include=["documents", "metadatas", "embeddings"])
                remote.upsert(got["documents"], ids=got["ids"], metadatas=got["metadatas"],
                              embeddings=got["embeddings"])
            res = measure(remote, queries, args.k)
            print(f"retrieval at {remote.count()} chunks through a Chroma server ({server.url}): "
                  f"p50 {res['p50']:.2f} ms, p90 {res['p90']:.2f} ms, p99 {res['p99']:.2f} ms "
                  f"(index lookup p50 {res['lookup_p50']:.2f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
