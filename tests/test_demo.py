"""The web demo: the page built around an export answers through its API with text and an overlay."""

from __future__ import annotations

import socket

import pytest
import torch
from conftest import TINY_TEST_CONFIG, make_image
from PIL import Image

from mmreason.demo import ask, build_demo, count_option
from mmreason.export import load_export, save_export
from mmreason.models.baseline import VisionLanguageModel

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture
def exported(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = VisionLanguageModel(TINY_TEST_CONFIG, tokenizer=tiny_tokenizer)
    return load_export(save_export(model, tmp_path / "export"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_page_answers_through_its_api_with_text_and_an_overlay(exported, tmp_path):
    make_image(0).save(tmp_path / "x.png")
    expected = exported.predict(str(tmp_path / "x.png"), "is there a red circle?", max_new_tokens=6)
    demo = build_demo(exported, max_new_tokens=6)
    assert isinstance(demo, gradio.Blocks)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        rationale, answer, confidence, overlay = client.predict(
            gradio_client.handle_file(str(tmp_path / "x.png")), "is there a red circle?", 1, 0.7, api_name="/answer")
    finally:
        demo.close()
    assert answer == (expected["answer"] or "") and rationale == (expected["rationale"] or "")
    assert confidence == ""  # a baseline gives none
    picture = Image.open(overlay)
    assert picture.width == 256 and picture.height > 256  # the picture, upscaled, and its caption band


def test_asking_without_an_image_is_refused_and_only_sampling_families_get_a_count(exported):
    with pytest.raises(ValueError, match="upload an image"):
        ask(exported, None, "is there a red circle?")
    assert count_option(exported) == "votes"  # a baseline samples K answers and votes
    exported.response_options = ()
    assert count_option(exported) is None
    exported.response_options = ("samples", "temperature")
    assert count_option(exported) == "samples"
