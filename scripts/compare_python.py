"""The pipeline a user might write instead of kasuhara-guard, for scripts/compare.sh:
NFKC, MeCab (fugashi + ipadic) tokenisation, and pyahocorasick over the same lexicon, searched
on the surface text and on the base forms. Prints one JSON line with chars/s on one core."""
import glob
import json
import sys
import time
import unicodedata

import ahocorasick
import fugashi
import ipadic

corpus, lexicon_dir = sys.argv[1], sys.argv[2]
texts = []
for line in open(corpus, encoding="utf-8"):
    line = line.strip()
    if line:
        try:
            texts.append(json.loads(line)["text"])
        except (ValueError, KeyError, TypeError):
            texts.append(line)

automaton = ahocorasick.Automaton()
entries = 0
for path in sorted(glob.glob(f"{lexicon_dir}/**/*.tsv", recursive=True)):
    if path.endswith("context.tsv"):
        continue
    for line in open(path, encoding="utf-8"):
        cols = line.rstrip("\n").split("\t")
        if line.startswith("#") or len(cols) < 5:
            continue
        entries += 1
        # Every alternative of every piece; joins (~N, &N) are beyond a simple user pipeline.
        for piece in cols[4].split(" "):
            if piece.startswith(("~", "&")):
                continue
            for alternative in piece.split("|"):
                key = unicodedata.normalize("NFKC", alternative).lower()
                automaton.add_word(key, cols[0])
automaton.make_automaton()
tagger = fugashi.GenericTagger(ipadic.MECAB_ARGS)


def screen(text):
    text = unicodedata.normalize("NFKC", text).lower()
    words = tagger(text)
    base = "".join(w.feature[6] if len(w.feature) > 6 and w.feature[6] != "*" else w.surface
                   for w in words)
    return len({v for _, v in automaton.iter(text)} | {v for _, v in automaton.iter(base)})


chars = sum(len(t) for t in texts)
hits = sum(screen(t) for t in texts)  # warm
started, rounds = time.perf_counter(), 0
while time.perf_counter() - started < 2.0:
    for t in texts:
        screen(t)
    rounds += 1
elapsed = time.perf_counter() - started
print(json.dumps({"texts": len(texts), "entries": entries, "hits": hits,
                  "chars_per_s": chars * rounds / elapsed}))
