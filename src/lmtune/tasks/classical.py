"""Classical text classifiers (scikit-learn): TF-IDF + logistic regression, what fine-tuning must beat on the
same validation rows, and, when one of them beats the fine-tuned model, a model of its own: saved with skops
(a format that loads without running pickled code) beside a config.json naming its labels, so `lmtune
classify` and `lmtune serve` use it like any classifier."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SKOPS_FILE = "model.skops"
ARCHITECTURE = "TfidfLogisticRegression"
C_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)


def default_tfidf(texts: list[str], labels: list[int]):
    """TF-IDF + logistic regression with scikit-learn's defaults: what a user tries first."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)).fit(texts, labels)


def tuned_tfidf(texts: list[str], labels: list[int]):
    """TF-IDF of words (1-2 grams) and characters (2-5 grams within words), sublinear term frequency, and the
    regularisation chosen by 5-fold cross-validation on the training rows: a strong classical model, far
    stronger than the defaults on long texts (measured in docs/learning.md)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
    )
    matrix = features.fit_transform(texts)
    folds = min(5, min(np.bincount(labels)[np.bincount(labels) > 0]))
    if folds >= 2:
        search = LogisticRegressionCV(Cs=list(C_GRID), cv=folds, max_iter=2000, scoring="accuracy")
        with warnings.catch_warnings():  # sklearn 1.8+ announces changes of defaults we do not rely on
            warnings.simplefilter("ignore", FutureWarning)
            chosen = search.fit(matrix, labels).C_[0]
    else:  # a class with a single row: no folds to choose by
        chosen = 10.0
    return make_pipeline(features, LogisticRegression(C=float(chosen), max_iter=2000)).fit(texts, labels)


def save(pipeline, folder: Path, labels: list[str]) -> None:
    """The fitted pipeline (skops) and a config.json naming its labels, in `folder`."""
    import skops.io

    skops.io.dump(pipeline, folder / SKOPS_FILE)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": [ARCHITECTURE],
                "model_type": "sklearn",
                "lmtune_objective": "classify",
                "id2label": {str(i): label for i, label in enumerate(labels)},
                "label2id": {label: i for i, label in enumerate(labels)},
            },
            indent=2,
        )
    )


def is_classical(folder: str | Path) -> bool:
    return (Path(folder) / SKOPS_FILE).is_file()


class ClassicalClassifier:
    """A saved classical pipeline, answering as lmtune's classifiers do (`engine` tells inference apart)."""

    engine = "sklearn"

    def __init__(self, folder: str | Path):
        import skops.io

        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        path = folder / SKOPS_FILE
        trusted = [t for t in skops.io.get_untrusted_types(file=path) if t.startswith(("sklearn.", "numpy.", "scipy."))]
        self.pipeline = skops.io.load(path, trusted=trusted)
        self.config = SimpleNamespace(
            id2label={int(k): v for k, v in config["id2label"].items()}, architectures=config["architectures"]
        )

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """[texts, labels] class probabilities, columns in label id order (a label the training rows lacked: 0)."""
        found = self.pipeline.predict_proba(texts)
        full = np.zeros((len(texts), len(self.config.id2label)))
        full[:, self.pipeline.classes_] = found
        return full
