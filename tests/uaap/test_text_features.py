"""Text columns as features (issue 14, part 3): TF-IDF fitted centrally equals scikit-learn's TfidfVectorizer, is
refused in a federation (its vocabulary is the clients' words) before anything starts, an empty text is refused with
its row, and the embedding-bag classifier is torch's EmbeddingBag over the bag of token weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from uaap.config import RunConfig
from uaap.data.preprocess import PreprocessOptions, Preprocessor, fit_parties
from uaap.errors import ConfigError, DataError

TOPICS = Path(__file__).resolve().parents[1] / "fixtures" / "text" / "topics.csv"


def test_tfidf_equals_scikit_learns_and_travels_as_json() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    frame = pd.read_csv(TOPICS)
    train, test = frame.iloc[:400], frame.iloc[400:]
    pre = Preprocessor(PreprocessOptions(text="tfidf")).fit(train[["text"]])
    reference = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b", max_features=1000).fit(train["text"])
    np.testing.assert_allclose(pre.transform(test[["text"]]), reference.transform(test["text"]).toarray(), atol=1e-6)
    words = sorted(reference.vocabulary_, key=reference.vocabulary_.get)
    assert list(pre.get_feature_names_out()) == [f"text#{w}" for w in words]
    again = Preprocessor.loads(pre.dumps())
    np.testing.assert_array_equal(again.transform(test[["text"]]), pre.transform(test[["text"]]))


def test_tfidf_is_refused_in_a_federation_naming_why() -> None:
    cfg = RunConfig(data_path=str(TOPICS), dataset="csv", target="topic", text_columns="tfidf", model="logreg")
    cfg.check_family("central")
    with pytest.raises(ConfigError, match="text-columns='tfidf' runs centrally only.*--text-columns hashing"):
        cfg.check_family("federated")
    frame = pd.read_csv(TOPICS)
    with pytest.raises(DataError, match="column 'text': text-columns='tfidf' fits a vocabulary of the words"):
        fit_parties([frame.iloc[:300], frame.iloc[300:]], ["text"], PreprocessOptions(text="tfidf"), target="topic")


@pytest.mark.parametrize("text", ["hashing", "tfidf"])
def test_an_empty_text_is_refused_with_its_row(text: str) -> None:
    frame = pd.read_csv(TOPICS)
    pre = Preprocessor(PreprocessOptions(text=text)).fit(frame[["text"]])
    rows = pd.DataFrame({"text": ["Rain over the coast.", " ... ", None]})
    with pytest.raises(DataError, match=r"column 'text', row 1: the text ' \.\.\. ' holds no word"):
        pre.transform(rows)
    assert pre.transform(rows.iloc[[0, 2]]).shape[0] == 2  # a missing text has no words: allowed
    with pytest.raises(DataError, match="column 'text', row 0: the text '' holds no word"):
        Preprocessor(PreprocessOptions(text=text, categorical_max=1)).fit_transform(pd.DataFrame({"text": ["", "a b"]}))


def test_embedding_bag_is_a_weighted_sum_of_token_embeddings() -> None:
    import torch

    from uaap.models import build_model

    net = build_model("embedding_bag", 6, 3, seed=0)
    x = torch.rand(4, 6)
    bag = x @ net.bag.weight  # each column a token, its value the token's weight
    expected = net.head(torch.relu(bag))
    torch.testing.assert_close(net(x), expected)
    assert set(dict(net.named_parameters())) == {"bag.weight", "head.weight", "head.bias"}  # what FedAvg averages
