"""The extractive QA recipe (SQuAD v1.1): end to end at toy size on articles the test writes, the official metric
and the sliding-window baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recipe_helpers import recipes_path, run_recipe  # noqa: F401  (fixtures; a nested conftest.py would shadow tests/conftest.py)

FACTS = [
    ("Warsaw", "Poland", "1596", "the Vistula"),
    ("Paris", "France", "508", "the Seine"),
    ("Vienna", "Austria", "1156", "the Danube"),
]


def write_squad(root: Path) -> Path:
    """squad/dev-v1.1.json in the official layout: articles, paragraphs, questions with crowd answers."""
    data, n = [], 0
    for city, country, year, river in FACTS:
        paras = []
        for k in range(2):
            ctx = (
                f"{city} is the capital of {country}. It became the capital in {year}. "
                f"The city stands on {river}, which flows through it. Part {k} of the article."
            )
            qas = []
            for q, a in (
                (f"Of which country is {city} the capital?", country),
                (f"When did {city} become the capital?", year),
                (f"On which river does {city} stand?", river),
            ):
                qas.append(
                    {
                        "id": f"q{n}",
                        "question": q,
                        "answers": [
                            {"text": a, "answer_start": ctx.index(a)},
                            {"text": a.split()[-1], "answer_start": 0},
                        ],
                    }
                )
                n += 1
            paras.append({"context": ctx, "qas": qas})
        data.append({"title": city, "paragraphs": paras})
    (root / "squad").mkdir(parents=True)
    (root / "squad" / "dev-v1.1.json").write_text(json.dumps({"data": data, "version": "1.1"}), encoding="utf-8")
    return root


@pytest.mark.slow
def test_squad_quick(tmp_path, run_recipe):
    m = run_recipe("squad", write_squad(tmp_path / "data"), tmp_path / "out")
    assert len(m["test_articles"]) == 1 and len(m["train_articles"]) == 2 and m["train_questions"] == 12
    assert m["test_questions"] == 5
    for k in ("model", "baseline"):
        assert 0 <= m[k]["exact_match"] <= 100 and 0 <= m[k]["f1"] <= 100
    assert m["baseline"]["f1"] > 0  # the window finds some of these answers
    assert m["finetune"]["conversations"] >= 4
    assert len(m["examples"]) == 2 and {"question", "answers", "output", "baseline"} <= set(m["examples"][0])


def test_official_metric(recipes_path):
    import squad_eval as E

    assert E.normalize_answer("The  Vistula!") == "vistula"
    assert E.exact_match_score("the Vistula", "Vistula.") and not E.exact_match_score("Vistula river", "Vistula")
    assert E.f1_score("Vistula river", "the Vistula") == pytest.approx(2 / 3)
    assert E.f1_score("nothing", "Vistula") == 0
    data = [
        {
            "paragraphs": [
                {
                    "qas": [
                        {"id": "a", "answers": [{"text": "1596"}, {"text": "in 1596"}]},
                        {"id": "b", "answers": [{"text": "Poland"}]},
                    ]
                }
            ]
        }
    ]
    assert E.evaluate(data, {"a": "in 1596", "b": "Poland and"}) == {
        "exact_match": 50.0,
        "f1": pytest.approx(83.333, abs=1e-3),
    }
    assert E.evaluate(data, {"a": "1596"})["exact_match"] == 50.0  # unanswered: 0


def test_window_answerer(recipes_path):
    import squad

    articles = [
        {"paragraphs": [{"context": "Warsaw became the capital of Poland in 1596 ."}]},
        {"paragraphs": [{"context": "Paris is in France ."}]},
    ]
    a = squad.WindowAnswerer(articles)
    ctx = "Warsaw became the capital of Poland in 1596. The Vistula flows through Warsaw."
    assert a.answer(ctx, "Which river flows through Warsaw?", window=3, max_len=2) == "Vistula"  # "The": a stop word
    assert a.answer(ctx, "Warsaw became the capital of which country?", window=2, max_len=1) == "Poland"
    assert a.answer("", "anything?", 3, 2) == ""


def test_split_by_article(recipes_path):
    import squad

    arts = [{"title": str(i), "paragraphs": []} for i in range(10)]
    tr, te = squad.split_articles(arts, 3, seed=0)
    assert len(te) == 3 and len(tr) == 7 and not {a["title"] for a in tr} & {a["title"] for a in te}
    assert squad.split_articles(arts, 3, seed=0) == (tr, te)
