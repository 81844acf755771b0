"""Plain modules through forward hooks (``module:PATH``) and the user-function escape hatch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdistill import Distiller, Match
from kdistill.adapters import FunctionAdapter, ModuleAdapter, make_adapter
from kdistill.errors import ConfigError, DataError, FeatureError, RefError
from kdistill.features import Features
from kdistill.refs import Ref, parse_ref
from tiny_engine import SmallCNN


IMAGES = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 3, 9, 3])


def refs(text: str) -> list[Ref]:
    return list(parse_ref(text))


def test_module_adapter_is_picked_for_plain_modules_and_hooks_outputs():
    model = SmallCNN().eval()
    adapter = make_adapter(model, refs("module:features.0,module:features.2,logits"))
    assert isinstance(adapter, ModuleAdapter)
    features = adapter({"inputs": IMAGES, "labels": LABELS})
    assert adapter.hooks.outputs == {}  # each pass hands its outputs over and keeps none
    assert features.modules["features.0"].shape == (4, 16, 8, 8)
    assert features.modules["features.2"].shape == (4, 32, 8, 8)
    torch.testing.assert_close(features.logits, model(IMAGES))
    torch.testing.assert_close(features.modules["features.0"], model.features[0](IMAGES))
    assert features.get(Ref("module", path="features.2")) is features.modules["features.2"]


def test_tuple_and_tensor_batches():
    model = SmallCNN().eval()
    adapter = make_adapter(model, refs("logits"))
    torch.testing.assert_close(adapter((IMAGES, LABELS)).logits, model(IMAGES))
    torch.testing.assert_close(adapter(IMAGES).logits, model(IMAGES))


def test_bad_module_path_lists_close_names():
    model = SmallCNN()
    with pytest.raises(RefError) as info:
        make_adapter(model, refs("module:feature.1"), where="student")
    message = str(info.value)
    assert message.startswith("student: the model has no sub-module 'module:feature.1'.")
    assert "Close names: features.1" in message


def test_bad_module_path_without_close_names_lists_modules():
    with pytest.raises(RefError, match=r"Modules include: features, features.0, features.0.0"):
        make_adapter(SmallCNN(), refs("module:zzzzzz"))


def test_transformer_refs_on_a_plain_module_are_refused_with_an_example():
    with pytest.raises(RefError, match=r"'hidden.1' needs a Hugging Face model; .*SmallCNN.*'module:head'"):
        make_adapter(SmallCNN(), refs("hidden.1"))


def test_lstm_output_tuple_is_reduced_to_its_tensor():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(5, 6, batch_first=True)
            self.out = nn.Linear(6, 3)

        def forward(self, x):
            return self.out(self.lstm(x)[0])

    model = Tagger()
    features = make_adapter(model, refs("module:lstm"))(torch.randn(2, 4, 5))
    assert features.modules["lstm"].shape == (2, 4, 6)


def test_function_adapter_returning_a_dict():
    model = SmallCNN().eval()

    def adapter_fn(model, batch):
        maps = model.features(batch["inputs"])
        return {"logits": model.head(maps.mean((2, 3))), "hidden": [batch["inputs"].flatten(1), maps.mean((2, 3))],
                "attn.0": maps[:, :2], "modules": {"stem": maps}}

    adapter = make_adapter(model, refs("logits,hidden.1"), adapter_fn)
    assert isinstance(adapter, FunctionAdapter)
    features = adapter({"inputs": IMAGES, "attention_mask": torch.ones(4, 3)})
    torch.testing.assert_close(features.logits, model(IMAGES))
    assert features.get(Ref("hidden", 1)).shape == (4, 32)
    assert features.extra["attn.0"].shape == (4, 2, 8, 8)
    assert features.modules["stem"].shape == (4, 32, 8, 8)
    assert features.attention_mask.shape == (4, 3)  # taken from the batch when the function gives none


def test_function_adapter_returning_features_or_garbage():
    model = SmallCNN().eval()
    given = Features(logits=torch.zeros(4, 10))
    assert make_adapter(model, [], lambda m, b: given)(IMAGES) is given

    def broken(model, batch):
        return [1, 2]

    with pytest.raises(FeatureError, match=r"adapter function broken returned list; return Features or a dict"):
        make_adapter(model, [], broken)(IMAGES)
    with pytest.raises(ConfigError, match=r"^student adapter: <lambda> takes \(batch\), but an adapter function "
                                          r"takes \(model, batch\)"):
        make_adapter(model, [], lambda batch: batch, where="student")
    with pytest.raises(ConfigError, match=r"^teacher adapter: expected a function \(model, batch\) -> Features or "
                                          r"dict, got str 'features'"):
        make_adapter(model, [], "features", where="teacher")


def test_a_batch_of_no_known_shape_is_a_data_error():
    with pytest.raises(DataError, match=r"cannot feed a batch of type str to a model: a batch must be a tensor"):
        make_adapter(SmallCNN().eval(), [])("not a batch")


def test_distiller_with_cnns_inserts_a_channel_projection():
    teacher, student = SmallCNN((16, 32, 32)), SmallCNN((8, 16, 16), seed=1)
    distiller = Distiller(teacher, student, [
        Match("module:features.2", loss="hidden_mse"),
        Match("logits", loss="kl", args={"temperature": 2.0}),
    ], hard_label_weight=0.5)
    batch = {"inputs": IMAGES, "labels": LABELS}
    plan = distiller.prepare(batch)
    assert plan[0].student_shape == (4, 16, 8, 8) and plan[0].teacher_shape == (4, 32, 8, 8)
    assert plan[0].projection == "linear 16->32"
    assert plan[1].projection is None
    projected = distiller.projections["m0"](torch.randn(4, 16, 8, 8))
    assert projected.shape == (4, 32, 8, 8)
    out = distiller(batch)
    assert set(out.parts) == {"hidden_mse[module:features.2]", "kl[logits]", "hard_label"}
    out.loss.backward()
    assert distiller.projections["m0"].module.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_cnn_width_mismatch_without_projection_proposes_one():
    teacher, student = SmallCNN((16, 32, 32)), SmallCNN((8, 16, 16), seed=1)
    distiller = Distiller(teacher, student, [Match("module:features.1", projection=None)])
    with pytest.raises(Exception) as info:
        distiller.prepare({"inputs": IMAGES})
    assert "widths differ (student 'module:features.1' is 16, teacher 'module:features.1' is 32)" in str(info.value)
    assert "projection: linear" in str(info.value)
