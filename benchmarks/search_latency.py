"""Gallery search latency at 100,000 images: text, semantic, hybrid and filtered queries.

Builds a synthetic gallery of realistic prompts (subject x setting x style x lighting templates,
like the prompts people type), their real all-MiniLM-L6-v2 embeddings (each distinct prompt is
embedded once; most prompts are rendered several times with different seeds, as in a real
gallery), and the denormalised filter columns, through ``Store.bulk_add`` (no image files: search
never opens them). Then times ``Store.search`` end to end, the query's own embedding included
(the query-vector cache is cleared before each timed query), and prints p50/p95 per kind.

Usage:
    python benchmarks/search_latency.py                       # SQLite, 100,000 images
    python benchmarks/search_latency.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/test
    python benchmarks/search_latency.py --images 20000 --queries 40   # quicker

The target (issue 15): p95 under 100 ms for every kind on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from machine import cpu_name

SUBJECTS = ["portrait of an old fisherman", "a red fox", "a lighthouse", "a cyberpunk street market",
            "a bowl of ramen", "a medieval castle", "a golden retriever puppy", "an astronaut",
            "a cherry blossom tree", "a vintage sports car", "a dragon", "a cozy library",
            "a mountain lake", "a robot barista", "a ballerina", "a desert caravan", "a koi pond",
            "a steam locomotive", "a witch's cottage", "a jellyfish", "a samurai", "a snowy owl",
            "a sunflower field", "a neon diner", "a sailing ship", "a violinist", "a tiger",
            "a futuristic city skyline", "a field of lavender", "a hot air balloon"]
SETTINGS = ["at dawn", "in the rain", "under the northern lights", "on a foggy morning", "at sunset",
            "in a snowstorm", "at night", "in spring", "by the sea", "in a dense forest", "on mars",
            "in a busy city", "in the desert", "underwater", "in a meadow"]
STYLES = ["oil painting", "watercolor", "35mm photo", "pixel art", "studio ghibli style",
          "charcoal sketch", "3d render", "ukiyo-e woodblock print", "art nouveau poster",
          "cinematic still", "low poly", "pencil drawing", "impressionist", "isometric illustration"]
LIGHT = ["soft light", "dramatic lighting", "golden hour", "backlit", "volumetric fog", "high contrast",
         "pastel colors", "muted tones", "vivid colors", "rim light"]
NEGATIVES = [None, None, "blurry", "blurry, low quality", "text, watermark", "extra fingers, deformed"]
SAMPLERS = ["euler", "heun", "dpmpp_2m", "ddim", "euler_ancestral"]
TEXT_QUERIES = ["fox", "lighthouse fog", "ramen", "castle sunset", "dragon watercolor", "neon", "tiger",
                "ship sea", "owl snow", "violinist", "robot", "lavender", "koi", "balloon", "samurai night",
                "pixel art", "jellyfish underwater", "puppy", "library", "astronaut mars"]
SEMANTIC_QUERIES = ["a small orange wild animal", "noodle soup", "a knight's fortress", "a musician playing strings",
                    "an old man who catches fish", "a space explorer", "a big striped cat", "a flying reptile",
                    "a train powered by steam", "a boat with sails on the ocean", "a bird in winter",
                    "a dog that is very young", "a room full of books", "a mechanical coffee maker",
                    "purple flowers in a field", "a glowing city of the future", "a dancer on stage",
                    "camels crossing sand dunes", "fish in a garden pond", "an old car from the sixties"]


def make_prompt(rng: random.Random) -> str:
    parts = [rng.choice(SUBJECTS), rng.choice(SETTINGS)]
    parts.append(", ".join(rng.sample(STYLES, 1) + rng.sample(LIGHT, rng.randint(0, 2))))
    return " ".join(parts[:2]) + ", " + parts[2]


def build(store, n_images: int, n_prompts: int, seed: int = 0):
    from limner.conditioning.prompt_embed import embed_prompts

    rng = random.Random(seed)
    prompts = sorted({make_prompt(rng) for _ in range(n_prompts * 2)})[:n_prompts]
    t0 = time.perf_counter()
    vectors = embed_prompts(prompts)
    print(f"embedded {len(prompts)} distinct prompts in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    owner = store.create_user("bench", None)
    start = time.time() - 365 * 86400
    batch = []
    t0 = time.perf_counter()
    for i in range(n_images):
        k = rng.randrange(len(prompts))
        record = {"prompt": prompts[k], "negative": rng.choice(NEGATIVES), "seed": rng.randrange(2**31),
                  "sampler": rng.choice(SAMPLERS), "steps": rng.choice([8, 12, 20, 30, 50]),
                  "cfg": rng.choice([1.0, 2.5, 3.0, 5.0, 7.5]), "family": "diffusion",
                  "run_id": f"run-{rng.randrange(12)}", "width": 64, "height": 64}
        batch.append({"path": f"images/bench/{i}.png", "record": record, "vector": vectors[k],
                      "content_hash": hashlib.sha256(f"{i}".encode()).hexdigest(),
                      "created": start + i * (365 * 86400 / n_images)})
        if len(batch) == 5000 or i == n_images - 1:
            store.bulk_add(owner, batch)
            batch = []
    print(f"inserted {n_images} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return owner


def percentiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs) * 1000, xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))] * 1000


def run_queries(store, user, n_queries: int) -> dict[str, tuple[float, float]]:
    from limner.store import Filters

    rng = random.Random(1)
    both = TEXT_QUERIES + SEMANTIC_QUERIES
    kinds = {
        "(query embedding alone)": lambda: store.embedder([rng.choice(SEMANTIC_QUERIES)]),
        "text": lambda: store.search(user, rng.choice(TEXT_QUERIES), mode="text"),
        "semantic": lambda: store.search(user, rng.choice(SEMANTIC_QUERIES), mode="semantic"),
        "hybrid": lambda: store.search(user, rng.choice(both), mode="hybrid"),
        "text + filters": lambda: store.search(user, rng.choice(TEXT_QUERIES), mode="text",
                                               filters=Filters(sampler=rng.choice(SAMPLERS), steps=20)),
        "hybrid + filters": lambda: store.search(user, rng.choice(both), mode="hybrid",
                                                 filters=Filters(sampler=rng.choice(SAMPLERS),
                                                                 model=f"run-{rng.randrange(12)}")),
        "filters only (list)": lambda: store.search(user, filters=Filters(
            model=f"run-{rng.randrange(12)}", since=time.time() - 90 * 86400)),
        "hybrid, page 2": lambda: _second_page(store, user, rng.choice(both)),
    }
    out = {}
    for name, fn in kinds.items():
        fn()  # warm-up: the first semantic search loads the vector cache
        times = []
        for _ in range(n_queries):
            store.__dict__.pop("_qcache", None)  # every query pays for its own embedding
            t0 = time.perf_counter()
            elapsed = fn()
            times.append(elapsed if isinstance(elapsed, float) else time.perf_counter() - t0)
        out[name] = percentiles(times)
    return out


def _second_page(store, user, q: str) -> float:
    """Time of fetching page 2 of a hybrid search (the cursor path)."""
    first = store.search(user, q, mode="hybrid")
    store.__dict__.pop("_qcache", None)
    t0 = time.perf_counter()
    store.search(user, q, mode="hybrid", cursor=first.next_cursor)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--prompts", type=int, default=3000, help="distinct prompts (each embedded once)")
    ap.add_argument("--queries", type=int, default=100, help="timed queries per kind")
    ap.add_argument("--pg", default=None, metavar="URL", help="also run on PostgreSQL (a fresh schema there)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # one short query gains nothing from intra-op threads
    from limner.conditioning.prompt_embed import embed_prompts
    from limner.store import Store

    backends = [("SQLite", None)] + ([("PostgreSQL", args.pg)] if args.pg else [])
    print(f"# {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
          f"{args.images:,} images ({args.prompts:,} distinct prompts), {args.queries} queries per kind, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    for label, url in backends:
        home = Path(tempfile.mkdtemp(prefix="limner-bench-"))
        schema = None
        if url:
            schema, url = _pg_schema(url)
        store = Store.open(url, home=home, embedder=embed_prompts)
        try:
            user = build(store, args.images, args.prompts)
            results = run_queries(store, user, args.queries)
        finally:
            store.close()
            if schema:
                _drop_schema(args.pg, schema)
        print(f"\n{label}\n| query | p50 ms | p95 ms |\n|---|---:|---:|")
        for name, (p50, p95) in results.items():
            print(f"| {name} | {p50:.1f} | {p95:.1f} |")
    return 0


def _pg_schema(url: str) -> tuple[str, str]:
    import sqlalchemy as sa

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine.dispose()
    sep = "&" if "?" in url else "?"
    return schema, f"{url}{sep}options=-csearch_path%3D{schema}"


def _drop_schema(url: str, schema: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
