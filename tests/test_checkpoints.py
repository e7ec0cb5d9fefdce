"""Released checkpoints converted into exports: a tiny, randomly initialised LLaVA-1.5 in transformers'
layout (and in the layout the hub's llava-hf checkpoints were saved in) converts into an export whose
preprocessing and logits equal transformers' own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_TEST_CONFIG
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

import mmreason
from mmreason.checkpoints import convert
from mmreason.checkpoints.source import CheckpointError
from mmreason.data.schema import Record
from mmreason.text.tokenizer import word_tokenizer

SIZE = 32
TINY_STAR = {**TINY_TEST_CONFIG, "output_format": "answer"}  # a 32 px image in a 4 x 4 grid of tokens


def _image(width: int = 48, height: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """A tiny LlavaForConditionalGeneration with its tokenizer and CLIP processor, saved as transformers
    saves it; its text table is padded beyond the tokenizer, as LLaVA-1.5's is."""
    torch.manual_seed(0)
    tokenizer = word_tokenizer("USER ASSISTANT : how many red shapes are there ? what colour is the circle".split())
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=SIZE, patch_size=8)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=len(tokenizer) + 7, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(
        "<image>"), image_seq_length=16, vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(config).eval()
    folder = tmp_path_factory.mktemp("llava-hf")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor = CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    processor.save_pretrained(folder)
    return folder, model, processor


def _copy_files(folder, dest, *extra: str):
    """A new checkpoint folder holding ``folder``'s config and tokenizer (and ``extra`` files), no weights."""
    dest.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", *extra):
        (dest / name).write_bytes((folder / name).read_bytes())
    return dest


def _same_outputs(export, reference, processor) -> None:
    model = mmreason.load(export)
    image = _image()
    pixels = model.preprocess(image)
    expected_pixels = processor(image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixels, expected_pixels, atol=1e-5, rtol=0)  # CLIP's resize, crop and normalisation
    record = Record(question="how many red shapes are there ?", answer="")
    inputs = model.processor.generation_inputs([record])
    with torch.no_grad():
        ours = model(pixels[None], inputs["input_ids"], inputs["attention_mask"]).logits
        theirs = reference(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           pixel_values=expected_pixels[None]).logits
    assert ours.shape[-1] >= theirs.shape[-1]
    torch.testing.assert_close(ours[..., : theirs.shape[-1]], theirs, atol=1e-5, rtol=1e-5)


def test_llava_hf_converts_into_an_export_with_transformers_outputs(llava, tmp_path):
    folder, reference, processor = llava
    export = convert("llava-hf", str(folder), tmp_path / "export")
    config = json.loads((export / "config.json").read_text())
    assert config["family"] == "baseline" and config["source"]["format"] == "llava-hf"
    assert config["config"]["prompt"].startswith("USER: <image>")
    _same_outputs(export, reference, processor)
    answer = mmreason.load(export).predict(_image(), "what colour is the circle ?", max_new_tokens=3)
    assert isinstance(answer["text"], str)


def test_the_hub_layout_in_bin_shards_converts_too(llava, tmp_path):
    """The hub's llava-hf checkpoints name keys ``language_model.model.*`` and
    ``vision_tower.vision_model.*`` and ship ``pytorch_model.bin`` shards with an index; all are read
    (the .bin files as data only)."""
    folder, reference, processor = llava
    hub = _copy_files(folder, tmp_path / "hub", "preprocessor_config.json")
    config = json.loads((hub / "config.json").read_text())
    config["text_config"].update(torch_dtype="float16", _name_or_path="lmsys/vicuna-7b-v1.5")  # as the hub's
    (hub / "config.json").write_text(json.dumps(config))
    renames = {"model.vision_tower.": "vision_tower.vision_model.",  # transformers 4 kept that level
               "model.multi_modal_projector.": "multi_modal_projector.",
               "model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head."}
    state = {next((new + k[len(old):] for old, new in renames.items() if k.startswith(old)), k): v
             for k, v in reference.state_dict().items()}
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :]}
    for name, names in shards.items():
        torch.save({k: state[k].clone() for k in names}, hub / name)
    index = {"weight_map": {k: name for name, names in shards.items() for k in names}}
    (hub / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    export = convert("llava-hf", str(hub), tmp_path / "export")
    _same_outputs(export, reference, processor)  # in float32: the saved dtype does not choose the model's
    assert "torch_dtype" not in json.loads((export / "config.json").read_text())["config"]["language"]["config"]


def test_an_index_naming_a_file_outside_its_folder_is_refused(llava, tmp_path):
    folder, _, _ = llava
    bad = _copy_files(folder, tmp_path / "bad")
    (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../secret.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard '../secret.safetensors' is not a plain file name"):
        convert("llava-hf", str(bad), tmp_path / "export")


def test_a_key_outside_the_layout_is_named(llava, tmp_path):
    folder, reference, _ = llava
    odd = _copy_files(folder, tmp_path / "odd")
    torch.save({**reference.state_dict(), "mystery.weight": torch.zeros(1)}, odd / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\), e.g. \['mystery.weight'\]"):
        convert("llava-hf", str(odd), tmp_path / "export")
    with pytest.raises(CheckpointError, match="unknown checkpoint format .llava-2.; formats: lisa, llava, llava-hf, meteor, mmcot, sam"):
        convert("llava-2", str(folder), tmp_path / "export")
    with pytest.raises(CheckpointError, match="neither a folder nor a hub id"):
        convert("llava-hf", str(tmp_path / "absent" / "folder"), tmp_path / "export")


def _expand2square(image: Image.Image, mean) -> Image.Image:
    """LLaVA-1.5's padding (llava/mm_utils.py), written out."""
    width, height = image.size
    side = max(width, height)
    result = Image.new(image.mode, (side, side), tuple(int(x * 255) for x in mean))
    result.paste(image, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return result


def test_original_llava_layout_with_a_separate_clip_converts(tmp_path):
    """liuhaotian's layout: the LM and ``model.mm_projector`` in one folder, CLIP named by the config (a hub
    id) or given as ``vision`` and read from its own checkpoint; images padded to a square with the mean colour."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionModel, LlamaForCausalLM

    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                            num_attention_heads=2, image_size=SIZE, patch_size=8)).eval()
    clip_folder = tmp_path / "clip"
    clip.save_pretrained(clip_folder)
    tokenizer = word_tokenizer("USER ASSISTANT : how many red shapes are there ?".split())
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256)
    lm = LlamaForCausalLM(text).eval()
    projector = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.Linear(32, 32))
    folder = tmp_path / "llava-v1.5"
    folder.mkdir()
    save_file({**{k: v.contiguous() for k, v in lm.state_dict().items()},
               **{f"model.mm_projector.{k}": v.contiguous() for k, v in projector.state_dict().items()}},
              folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        **text.to_dict(), "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
        "mm_vision_tower": str(clip_folder), "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 32,
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False, "tokenizer_model_max_length": 256}))
    tokenizer.save_pretrained(folder)
    with pytest.raises(CheckpointError, match="format 'llava-hf' takes no option 'vision'"):
        convert("llava-hf", str(folder), tmp_path / "export", vision=str(clip_folder))
    with pytest.raises(CheckpointError, match="is not a hub id .org/name.; pass the folder explicitly"):
        convert("llava", str(folder), tmp_path / "export")  # the config may not point at a folder on this disk
    model = mmreason.load(convert("llava", str(folder), tmp_path / "export", vision=str(clip_folder)))
    assert model.preprocess.resize == "pad" and "A chat between" in model.processor.prompt

    image = _image()
    processor = CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    expected_pixels = processor(_expand2square(image, processor.image_mean), return_tensors="pt")["pixel_values"]
    pixels = model.preprocess(image)[None]
    torch.testing.assert_close(pixels, expected_pixels, atol=1e-5, rtol=0)
    inputs = model.processor.generation_inputs([Record(question="how many red shapes are there ?", answer="")])
    ids = inputs["input_ids"]
    with torch.no_grad():  # LLaVA's forward: CLIP layer -2 without CLS, the projector, spliced at the image
        features = projector(clip(pixel_values=expected_pixels, output_hidden_states=True).hidden_states[-2][:, 1:])
        embeds = lm.model.embed_tokens(ids.clamp(max=text.vocab_size - 1))
        embeds[ids == tokenizer.convert_tokens_to_ids("<image>")] = features.reshape(-1, 32)
        theirs = lm(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
        ours = model(pixels, ids, inputs["attention_mask"]).logits
    torch.testing.assert_close(ours[..., : text.vocab_size], theirs, atol=1e-5, rtol=1e-5)


def test_siglip_tower_reads_every_token_of_the_chosen_layer():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from mmreason.layers.vision import build_vision_tower

    fields = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 16, "patch_size": 4}
    torch.manual_seed(0)
    tower = build_vision_tower({"hf": {"model_type": "siglip_vision_model", "config": fields, "feature_layer": -1,
                                       "select": "full"}})
    reference = SiglipVisionModel(SiglipVisionConfig(**fields))
    reference.load_state_dict(tower.model.state_dict())
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = reference(pixel_values=images, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(tower(images), expected)
    assert tower.num_tokens(16) == 16 and tower.width == 16
    with pytest.raises(ValueError, match="feature_layer 5 is outside the tower's 2 layers"):
        build_vision_tower({"hf": {"model_type": "siglip_vision_model", "config": fields, "feature_layer": 5}})


def test_pad_to_square_with_the_mean_colour_then_resize():
    from mmreason.data.preprocess import Preprocess

    image = Image.new("RGB", (4, 2), (200, 10, 10))
    pixels = Preprocess(image_size=4, mean=(0.5, 0.25, 0.0), resize="pad").to_pixels(image)
    assert pixels[0, 0].tolist() == [127, 63, 0] and pixels[3, 3].tolist() == [127, 63, 0]  # the padded rows
    assert pixels[1:3, :].reshape(-1, 3).tolist() == [[200, 10, 10]] * 8  # the image, centred
    with pytest.raises(ValueError, match="resize must be one of"):
        Preprocess(resize="stretch")


def test_prompt_templates_and_plain_answers():
    from mmreason.text.prompts import check_prompt, target_text, user_prompt

    template = "USER: <image>\n{question}{choices} ASSISTANT:"
    assert user_prompt(" what is it? ", None, template) == "USER: <image>\nwhat is it? ASSISTANT:"
    assert target_text(Record(question="q", answer=" 3 "), "plain") == "3"
    with pytest.raises(ValueError, match="must contain '<image>' once and '{question}'"):
        check_prompt("USER: {question}")
    with pytest.raises(ValueError, match="has a field other than"):
        check_prompt("<image> {question} {answer}")


def test_sam_decoder_weights_load_into_a_segmentation_export_by_name(tmp_path):
    """SAM's checkpoint is one state dict (image encoder, prompt encoder, mask decoder); the last two load
    by name into a star export built at the same decoder size, and other sizes name the shapes."""
    from mmreason.build import build_model
    from mmreason.export import save_export
    from mmreason.layers.mask_decoder import MaskDecoder, PromptEncoder

    star = build_model("star", {**TINY_STAR, "segmentation": {"embed_dim": 32, "num_heads": 4, "depth": 2}},
                       tokenizer=word_tokenizer(["segment", "the", "circle"]))
    into = save_export(star, tmp_path / "star")
    torch.manual_seed(1)
    prompt, decoder = PromptEncoder(32, 32, 4), MaskDecoder(32, 4, 2, iou_head_hidden_dim=32)
    sam = {**{f"prompt_encoder.{k}": v for k, v in prompt.state_dict().items()},
           **{f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()},
           "image_encoder.patch_embed.proj.weight": torch.zeros(2, 3, 16, 16)}  # not taken: our own tower stays
    torch.save(sam, tmp_path / "sam_vit_t.pth")
    model = mmreason.load(convert("sam", str(tmp_path / "sam_vit_t.pth"), tmp_path / "export", into=str(into)))
    for key, value in decoder.state_dict().items():
        torch.testing.assert_close(model.mask_decoder.state_dict()[key], value)
    torch.testing.assert_close(model.prompt_encoder.no_mask_embed.weight, prompt.no_mask_embed.weight)
    torch.testing.assert_close(model.vision.state_dict(), star.vision.state_dict())
    small = save_export(build_model("star", {**TINY_STAR, "segmentation": {"embed_dim": 16, "num_heads": 2}},
                                    tokenizer=word_tokenizer(["segment"])), tmp_path / "small")
    with pytest.raises(CheckpointError, match=r"does not fit .*point_embeddings.0.weight \(1, 32\) vs ours \(1, 16\)"):
        convert("sam", str(tmp_path / "sam_vit_t.pth"), tmp_path / "export2", into=str(small))
    with pytest.raises(CheckpointError, match="give it with --into EXPORT"):
        convert("sam", str(tmp_path / "sam_vit_t.pth"), tmp_path / "export3")


def test_a_converted_export_evaluates_and_fine_tunes_like_any_other(llava, tmp_path):
    from mmreason.build import create_model
    from mmreason.data.preprocess import Preprocess
    from mmreason.data.shards import eval_stream, resolve_shards
    from mmreason.data.synth import SynthConfig
    from mmreason.data.synth_shards import synthesize
    from mmreason.inference import evaluate

    folder, _, _ = llava
    export = convert("llava-hf", str(folder), tmp_path / "export")
    synthesize(tmp_path / "data", {"test": 4}, SynthConfig(tasks=("count",)), progress=False)
    urls = resolve_shards(tmp_path / "data", "test")
    report = evaluate(mmreason.load(export), urls, batch_size=4, max_new_tokens=3)["report"]
    assert report["n"] == 4 and 0.0 <= report["accuracy"] <= 1.0
    model = create_model(init={"from": str(export), "frozen": ["vision"]})  # fine-tuning starts here
    batch = next(iter(eval_stream(urls, Preprocess.from_dict(model.preprocess.to_dict()), 4)[0]))
    batch["images"] = model.preprocess.normalize(batch["pixels"])
    out = model.loss(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["target_tokens"] > 0
    assert model.lm.get_input_embeddings().weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vision.parameters())


def test_a_converted_export_loads_in_bfloat16_and_answers(llava, tmp_path):
    folder, _, _ = llava
    export = convert("llava-hf", str(folder), tmp_path / "export")
    full, half = mmreason.load(export), mmreason.load(export, dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16
    inputs = full.processor.generation_inputs([Record(question="how many red shapes are there ?", answer="")])
    pixels = full.preprocess(_image())[None]
    with torch.no_grad():
        expected = full(pixels, inputs["input_ids"], inputs["attention_mask"]).logits
        got = half(pixels.bfloat16(), inputs["input_ids"], inputs["attention_mask"]).logits.float()
    torch.testing.assert_close(got, expected, atol=0.1, rtol=0.05)  # bfloat16 keeps ~3 significant digits
    assert isinstance(half.predict(_image(), "what colour is the circle ?", max_new_tokens=2)["text"], str)
    with pytest.raises(ValueError, match="dtype must be one of"):
        mmreason.load(export, dtype="int8")
