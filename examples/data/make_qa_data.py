"""Regenerate the tiny extractive-QA data and its word-level tokenizer used by examples/qa_squad.yaml and CI.

    python examples/data/make_qa_data.py

No extractive question-answering set ships inside a package, so this data is made here: templated
facts ("Ada was born in Leeds.") asked back ("Where was Ada born?"). Each context holds several facts
about several people, some long enough (over 32 tokens) that a question's context is cut into
windows that share ``data.stride`` tokens. Deterministic (seeded); SQuAD-shaped JSONL records.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PEOPLE = ["ada", "bruno", "clara", "dmitri", "elena", "farid", "greta", "hugo", "ines", "jonas", "karla", "liam"]
CITIES = ["leeds", "porto", "oslo", "lyon", "turin", "quito", "lima", "riga", "cork", "kyoto", "perth", "dakar"]
THINGS = ["chess", "tennis", "music", "poetry", "rowing", "cooking", "physics", "painting"]
FACTS = {  # question template, sentence template, the pool the answer comes from
    "born": ("Where was {p} born?", "{P} was born in {a}.", CITIES),
    "lives": ("Where does {p} live now?", "{P} now lives in {a}.", CITIES),
    "likes": ("What does {p} like?", "{P} likes {a} very much.", THINGS),
}
FILLER = ["The weather there is often cold and wet.", "Many people visit the old market on Sundays.",
          "The river runs through the middle of the town.", "It has a small museum and a large park."]
SIZES = {"qa_train.jsonl": 48, "qa_validation.jsonl": 12, "qa_test.jsonl": 12}


def record(rng: random.Random, name: str) -> dict:
    people = rng.sample(PEOPLE, k=rng.randint(2, 4))
    sentences, facts = [], []
    for person in people:
        for kind in rng.sample(sorted(FACTS), k=rng.randint(1, 2)):
            _, template, pool = FACTS[kind]
            answer = rng.choice(pool)
            facts.append((person, kind, answer))
            sentences.append(template.format(P=person.capitalize(), a=answer.capitalize()))
    for _ in range(rng.randint(0, 4)):  # long contexts: several windows per question
        sentences.insert(rng.randint(0, len(sentences)), rng.choice(FILLER))
    person, kind, answer = rng.choice(facts)
    question, template, _ = FACTS[kind]
    sentence = template.format(P=person.capitalize(), a=answer.capitalize())
    context = " ".join(sentences)
    start = context.index(sentence) + sentence.index(answer.capitalize())
    return {"id": name, "question": question.format(p=person.capitalize()), "context": context,
            "answers": {"text": [answer.capitalize()], "answer_start": [start]}}


def main() -> None:
    rng = random.Random(0)
    words: set[str] = set()
    for file, size in SIZES.items():
        stem = file.split("_")[1].split(".")[0]
        rows = [record(rng, f"{stem}-{i}") for i in range(size)]
        with open(HERE / file, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
                for text in (row["question"], row["context"]):
                    words |= set(text.lower().replace(".", " . ").replace("?", " ? ").split())
    folder = HERE / "qa_tokenizer"
    folder.mkdir(exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + sorted(words)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 128}, indent=2) + "\n")


if __name__ == "__main__":
    main()
