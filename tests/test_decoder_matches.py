"""Attention and MiniLM relation matches between decoder-only LMs (tiny random Llama and GPT-2), through
the Distiller on real features, against naive float64 loops that only ever look at keys j ≤ query i."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from kdistill import Distiller, Match

LENGTHS = [6, 4]  # right padding in the second row, as causal-LM batches are padded
T = max(LENGTHS)


def decoder(kind: str, width: int, seed: int):
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=width, n_head=4, vocab_size=60, n_positions=16,
                                         bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config).double().eval()
    config = transformers.LlamaConfig(vocab_size=60, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                      pad_token_id=0)
    return transformers.LlamaForCausalLM(config).double().eval()


def batch(seed: int = 0) -> dict:
    ids = torch.randint(1, 60, (len(LENGTHS), T), generator=torch.Generator().manual_seed(seed))
    mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def parts(teacher, student, matches, inputs):
    distiller = Distiller(teacher, student, matches)
    distiller.prepare(inputs)
    with torch.no_grad():
        out = distiller(inputs)
    return out.parts, distiller.teacher_features(inputs)["teacher"], distiller.student_features(inputs)


def real_pairs(mask):
    """(b, i, keys): every real query i of row b with the real keys j ≤ i it may attend to."""
    return [(b, i, [j for j in range(i + 1) if mask[b, j]]) for b in range(len(LENGTHS)) for i in range(T) if mask[b, i]]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def relation(x, b, head, i, keys, heads):
    width = x.shape[-1] // heads
    part = slice(head * width, (head + 1) * width)
    x = x.detach()
    scores = [float(x[b, i, part] @ x[b, j, part]) / math.sqrt(width) for j in keys]
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_attention_losses_between_decoders_follow_a_naive_causal_loop(kind):
    """attn.N of a teacher and a narrower student decoder: finite, and over real (query, key ≤ query)
    entries only — attention_mse does not average in the masked future (two zeros each)."""
    inputs = batch()
    matches = [Match("attn.1", "attn.1", "attention_kl", name="kl"), Match("attn.0", "attn.0", "attention_mse", name="mse")]
    got, teacher, student = parts(decoder(kind, 32, 0), decoder(kind, 16, 1), matches, inputs)
    a_t, a_s = teacher.attentions, student.attentions
    pairs = real_pairs(inputs["attention_mask"])
    kls = [kl([a_t[1][b, h, i, j].item() for j in keys], [a_s[1][b, h, i, j].item() for j in keys])
           for b, i, keys in pairs for h in range(4)]
    squares = [(a_s[0][b, h, i, j] - a_t[0][b, h, i, j]).item() ** 2 for b, i, keys in pairs for h in range(4)
               for j in keys]
    assert torch.isfinite(got["kl"]) and torch.isfinite(got["mse"])
    assert got["kl"].item() == pytest.approx(sum(kls) / len(kls), rel=1e-9)
    assert got["mse"].item() == pytest.approx(sum(squares) / len(squares), rel=1e-9)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_identical_decoders_give_zero_attention_and_relation_losses(kind):
    model = decoder(kind, 32, 0)
    twin = decoder(kind, 32, 0)
    matches = [Match("attn.1", "attn.1", "attention_kl", name="kl"), Match("attn.1", "attn.1", "attention_mse", name="mse"),
               *[Match(f"{k}.1", f"{k}.1", "relation_kl", args={"num_heads": 2}, name=k) for k in ("query", "key", "value")]]
    got, _, _ = parts(model, twin, matches, batch())
    assert all(value.item() == pytest.approx(0.0, abs=1e-12) for value in got.values()), got


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_relation_losses_between_decoders_follow_a_naive_causal_loop(kind):
    """The Distiller tells the relation losses the student is causal: query i relates to real keys j ≤ i."""
    inputs = batch()
    matches = [Match(f"{k}.1", f"{k}.1", "relation_kl", args={"num_heads": 2}, name=k) for k in ("query", "key")]
    matches.append(Match("value.1", "value.1", "value_relation_kl", args={"num_heads": 2}, name="value"))
    got, teacher, student = parts(decoder(kind, 32, 0), decoder(kind, 16, 1), matches, inputs)
    pairs = real_pairs(inputs["attention_mask"])
    for name, table in (("query", "queries"), ("key", "keys"), ("value", "values")):
        x_t, x_s = getattr(teacher, table)[1], getattr(student, table)[1]
        terms = [kl(relation(x_t, b, h, i, keys, 2), relation(x_s, b, h, i, keys, 2)) for b, i, keys in pairs
                 for h in range(2)]
        assert got[name].item() == pytest.approx(sum(terms) / len(terms), rel=1e-9), name


def test_a_future_token_never_changes_the_relation_loss_at_earlier_positions():
    """Change the last token of the first row: the loss over the queries before it (the whole loss less
    the last query's term) stays what it was, and equals the loss with that token masked out."""
    teacher, student = decoder("llama", 32, 0), decoder("llama", 16, 1)
    match = [Match("value.1", "value.1", "relation_kl", args={"num_heads": 2}, name="value")]
    inputs = {"input_ids": batch()["input_ids"][:1], "attention_mask": torch.ones(1, T, dtype=torch.long)}
    changed = {**inputs, "input_ids": inputs["input_ids"].clone()}
    changed["input_ids"][0, -1] = (changed["input_ids"][0, -1] + 7) % 60
    masked = {**inputs, "attention_mask": inputs["attention_mask"].clone()}
    masked["attention_mask"][0, -1] = 0
    earlier = []
    for x in (inputs, changed):
        got, feats_t, feats_s = parts(teacher, student, match, x)
        last = [kl(relation(feats_t.values[1], 0, h, T - 1, range(T), 2),
                   relation(feats_s.values[1], 0, h, T - 1, range(T), 2)) for h in range(2)]
        earlier.append(got["value"].item() * 2 * T - sum(last))  # summed terms of queries 0 … T−2
    without_last, _, _ = parts(teacher, student, match, masked)
    assert earlier[0] == pytest.approx(earlier[1], rel=1e-9)
    assert earlier[0] == pytest.approx(without_last["value"].item() * 2 * (T - 1), rel=1e-9)
