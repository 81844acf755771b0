# The seed article's TextBrewer example (section 7.2), running on kdistill.
#
# Changed from the article, and nothing else:
#   - the import lines: `textbrewer` -> `kdistill.compat.textbrewer`;
#   - sizes, so it runs in seconds on a CPU: 320 rows instead of 100000, hidden_size 64
#     (4 heads, intermediate 128) instead of BERT-base's 768;
#   - the article's indentation (lost in extraction) restored, and its three garbled spots
#     (marked below) completed.
# TrainingConfig(device='cuda') falls back to the CPU with a warning when there is no GPU.
# Losses go to logs/metrics.jsonl (and TensorBoard); checkpoints to saved_models/gs<step>.safetensors.
import torch
import numpy as np
import pickle
import kdistill.compat.textbrewer as textbrewer
from kdistill.compat.textbrewer import GeneralDistiller
from kdistill.compat.textbrewer import TrainingConfig, DistillationConfig
from transformers import BertConfig, BertModel
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

## 定义模型
bert_config = BertConfig(num_hidden_layers=12, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                         output_hidden_states=True, output_attentions=True)
teacher_model = BertModel(bert_config).to(device)
bert_config = BertConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                         output_hidden_states=True, output_attentions=True)
student_model = BertModel(bert_config).to(device)

# optimizer
param_optimizer = list(student_model.named_parameters())
no_decay = ['bias', 'LayerNorm.bias', 'LayerNorm.weight']
optimizer_grouped_parameters = [
    {'params': [p for n, p in param_optimizer if not any(nd in n for nd in no_decay)], 'weight_decay': 0.01},
    {'params': [p for n, p in param_optimizer if any(nd in n for nd in no_decay)], 'weight_decay': 0.0}
]
optimizer = torch.optim.Adam(params=optimizer_grouped_parameters, lr=2e-5)

### data
input_ids = torch.LongTensor(np.random.randint(100, 1000, (320, 64)))
attention_mask = torch.LongTensor(np.ones((320, 64)))  # [garbled in extraction]
token_type_ids = torch.LongTensor(np.zeros((320, 64)))  # [garbled in extraction]
train_data = TensorDataset(input_ids, attention_mask, token_type_ids)
train_sampler = RandomSampler(train_data)
train_dataloader = DataLoader(train_data, sampler=train_sampler, batch_size=16)


# Define an adaptor for translating the model inputs and outputs
# 整合成蒸馏器需要的数据格式
# key需要是固定的
def bert_adaptor(batch, model_outputs):
    last_hidden_state, pooler_output, hidden_states, attentions = model_outputs
    hidden_states = list(hidden_states)
    hidden_states.append(pooler_output)
    output = {"inputs_mask": batch[1],
              "attention": attentions,
              "hidden": hidden_states}
    return output


# Training configuration
train_config = TrainingConfig(gradient_accumulation_steps=1,
                              ckpt_frequency=10,
                              ckpt_epoch_frequency=1,
                              log_dir='logs',
                              output_dir='saved_models',
                              device='cuda')
# Distillation configuration
# Matching different layers of the student and the teacher
# 重要,如何蒸馏的定义
# 不⽀持⾃定义损失函数
# 不⽀持CLS LOSS,但是可以强⾏写在hidden loss⾥⾯
distill_config = DistillationConfig(
    intermediate_matches=[
        {'layer_T': 0, 'layer_S': 0, 'feature': 'hidden', 'loss': 'hidden_mse', 'weight': 1},  # embedding loss
        {'layer_T': 4, 'layer_S': 1, 'feature': 'hidden', 'loss': 'hidden_mse', 'weight': 1},  # hidden loss
        {'layer_T': 8, 'layer_S': 2, 'feature': 'hidden', 'loss': 'hidden_mse', 'weight': 1},
        {'layer_T': 12, 'layer_S': 3, 'feature': 'hidden', 'loss': 'hidden_mse', 'weight': 1},
        {'layer_T': 3, 'layer_S': 0, 'feature': 'attention', 'loss': 'attention_mse', 'weight': 1},  # attention loss
        {'layer_T': 7, 'layer_S': 1, 'feature': 'attention', 'loss': 'attention_mse', 'weight': 1},
        {'layer_T': 11, 'layer_S': 2, 'feature': 'attention', 'loss': 'attention_mse', 'weight': 1},
        {'layer_T': 12, 'layer_S': 3, 'feature': 'hidden', 'loss': 'hidden_mse', 'weight': 1},  # 其实是CLS loss
    ]
)

# Build distiller
distiller = GeneralDistiller(
    train_config=train_config, distill_config=distill_config,
    model_T=teacher_model, model_S=student_model,
    adaptor_T=bert_adaptor, adaptor_S=bert_adaptor)

# Start!
# callbacker 可以在dev上进⾏评估
# 注意存的是state_dict
with distiller:
    distiller.train(optimizer, train_dataloader, num_epochs=1, callback=None)  # [garbled in extraction]
