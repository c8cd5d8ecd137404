"""A tiny BERT's sizes for the precision tests (conftest.py's `bert` fixture exports it): two layers
of two heads, so that tests count the attentions by num_hidden_layers."""
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "vocab_size": 2000, "max_position_embeddings": 64}
BATCH, SEQ = 2, 16
