"""avfuse search: text-embedding throughput, and search latency plain vs. indexed over N moments.

1. all-MiniLM-L6-v2 (operators/text_embedding.py) sentences/s on the CPU at 1 torch
   thread (and at the machine's cores), for short class names (~3 word pieces) and
   transcript-like sentences (~16 words), batch 64; medians of --repeats runs.
2. A synthetic records file of --moments moments (default 10,000): half transcript
   sentences, each distinct (the worst case: nothing to share), half tag and signal
   events (AudioSet / ImageNet names with ancestors, as a replay writes them; names
   repeat, so they are embedded once per distinct text). Then, in one process with the
   model loaded (its load time is printed apart): a plain search (read, embed, rank),
   the index's first build, and a search that reuses the index, each timed; and the
   ranking alone over the loaded tables.

    python -m benchmarks.bench_search [--moments 10000] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from operators.audioset import AudioSetClasses
from operators.text_embedding import MODEL_NAME, load_text_encoder
from pipeline.output.records import Event
from pipeline.search.index import SearchIndex
from pipeline.search.moments import read_moments
from pipeline.search.rank import rank
from pipeline.search.table import build_table

WORDS = ("launch window weather range go control room rocket engine countdown booster stage orbit crew capsule "
         "pad tower telemetry nominal pressure valve fuel oxygen abort hold minute second noon tomorrow clear "
         "wind speed cloud ceiling camera signal recovery ship ocean landing music crowd applause speaker").split()
SENTENCE_WORDS = 16


def synthetic_records(path: Path, n_moments: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    classes = AudioSetClasses()
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    with open(path, "w") as handle:
        for i in range(n_moments):
            t_s = i * 2.0
            if i % 2 == 0:
                words = [rng.choice(WORDS) for _ in range(SENTENCE_WORDS)]
                said = [{"word": f" {w}", "start_s": t_s + k * 0.1, "end_s": t_s + k * 0.1 + 0.08, "probability": 0.9}
                        for k, w in enumerate(words)]
                record = {"schema": "avfuse.transcript/1", "type": "transcript", "stream_id": "bench.mp4",
                          "transcript_id": f"t{i}", "start_s": t_s, "end_s": t_s + 1.6,
                          "text": " ".join(words).capitalize() + ".", "language": "en",
                          "language_probability": 0.99, "words": said, "avg_logprob": -0.3,
                          "no_speech_prob": 0.01, "model": "tiny.en"}
            elif i % 6 == 1:
                index = rng.randrange(len(classes))
                record = Event("bench.mp4", classes.names[index], t_s, t_s + 1.0, 0.8, "sound_tags", "1",
                               attributes={"ancestors": [classes.names[a] for a in classes.ancestors(index)]}
                               ).to_dict()
            elif i % 6 == 3:
                record = Event("bench.mp4", rng.choice(_IMAGENET_CATEGORIES), t_s, t_s + 1.0, 0.7, "visual_tags",
                               "1").to_dict()
            else:
                label = rng.choice(("scene_cut", "silence", "black_video", "loud_onset", "speech"))
                record = Event("bench.mp4", label, t_s, t_s + 0.5, 1.0, label, "1").to_dict()
            handle.write(json.dumps(record) + "\n")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moments", type=int, default=10_000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    encoder = load_text_encoder()
    print(f"{MODEL_NAME}: loaded in {time.perf_counter() - start:.2f} s (sha256 check + safetensors)")
    rng = random.Random(1)
    names = list(AudioSetClasses().names)[:256]
    sentences = [" ".join(rng.choice(WORDS) for _ in range(SENTENCE_WORDS)) + "." for _ in range(256)]
    for threads in dict.fromkeys(args.threads):
        torch.set_num_threads(threads)
        encoder.encode(names[:64])  # warm-up
        for what, texts in (("class names", names), ("16-word sentences", sentences)):
            seconds = median_time(lambda: encoder.encode(texts), args.repeats)
            print(f"embed {what:18s} {threads} thread(s): {len(texts) / seconds:7.0f} texts/s")

    torch.set_num_threads(args.threads[0])
    folder = Path(tempfile.mkdtemp(prefix="avfuse-bench-search-"))
    try:
        records = folder / "records.jsonl"
        synthetic_records(records, args.moments)
        found = read_moments(records)
        distinct = len({t.text for m in found.moments for t in m.texts})
        print(f"\n{len(found.moments)} moments ({distinct} distinct texts), {records.stat().st_size / 1e6:.1f} MB "
              f"of JSONL, torch threads {args.threads[0]}")
        query = "when does the rocket launch"

        def plain():
            return rank(query, [build_table(read_moments(records), encoder)], encoder)

        start = time.perf_counter()
        plain_results = plain()
        plain_s = time.perf_counter() - start
        index_dir = folder / "index"

        def indexed():
            tables, _ = SearchIndex(index_dir, MODEL_NAME, encoder.weights.sha256).tables([records], encoder)
            return rank(query, tables, encoder)

        start = time.perf_counter()
        indexed()
        build_s = time.perf_counter() - start
        reuse_s = median_time(indexed, args.repeats)
        assert indexed() == plain_results
        tables = [build_table(read_moments(records), encoder)]
        rank_s = median_time(lambda: rank(query, tables, encoder), args.repeats)
        size_mb = sum(p.stat().st_size for p in index_dir.iterdir()) / 1e6
        print(f"plain search (read + embed + rank):  {plain_s:7.2f} s")
        print(f"index, first search (builds it):     {build_s:7.2f} s")
        print(f"index, later searches (reuse):       {reuse_s * 1000:7.0f} ms   ({size_mb:.1f} MB on disk)")
        print(f"ranking alone (query embed + score): {rank_s * 1000:7.0f} ms")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
