"""``mmreason demo --model EXPORT``: a web page to try an export on your own images.

People judge a reasoning model by asking it things, as LISA's and Meteor's demos let them: upload an
image, ask, and see the rationale, the answer, the confidence (families that vote give one) and what
the model found drawn on the image (:mod:`mmreason.overlay`). Families that sample several answers
(``votes``, ``samples`` in their ``response_options``) get a control for how many. Gradio is an
optional extra (``pip install 'mmreason[demo]'``), imported only when a demo is built.
"""

from __future__ import annotations

from PIL import Image

from mmreason.export import load_export
from mmreason.overlay import draw_prediction

COUNT_OPTIONS = {"votes": "votes: sample this many rationales and majority-vote the answer",
                 "samples": "samples: sample this many answers and aggregate their masks"}


def _gradio():
    try:
        import gradio
    except ImportError as error:
        raise ImportError("the demo needs gradio, an optional extra: pip install 'mmreason[demo]'") from error
    return gradio


def count_option(model) -> str | None:
    """The option through which ``model``'s family samples several answers (``votes``, ``samples``), if any."""
    return next((option for option in COUNT_OPTIONS if option in model.response_options), None)


def ask(model, picture: Image.Image | None, question: str, count: int = 1, temperature: float = 0.7,
        max_new_tokens: int = 160) -> tuple[str, str, str, Image.Image]:
    """(rationale, answer, confidence, overlay) for one image and question, as the page shows them;
    ``count`` > 1 samples that many answers where the family can (at ``temperature``)."""
    if picture is None:
        raise ValueError("upload an image first")
    picture = model.preprocess.open_rgb(picture)
    option, options = count_option(model), {}
    if option and int(count) > 1:
        options = {option: int(count), "temperature": float(temperature)}
    out = model.predict(picture, question, max_new_tokens=max_new_tokens, **options)
    confidence = ""
    if out.get("confidence") is not None:
        ballots = ", ".join("unparsed" if b is None else str(b) for b in out.get("votes") or [])
        confidence = f"{out['confidence']:.2f} ({int(count)} votes: {ballots})"
    return out.get("rationale") or "", out.get("answer") or "", confidence, draw_prediction(picture, question, out)


def build_demo(model, max_new_tokens: int = 160):
    """The page (a ``gradio.Blocks``) around a loaded ``model``; its one event is the API ``/answer``
    (image, question, count, temperature → rationale, answer, confidence, overlay)."""
    gr = _gradio()
    option = count_option(model)

    def answer(picture, question, count, temperature):
        try:
            return ask(model, picture, question, count, temperature, max_new_tokens)
        except ValueError as error:  # no image, an empty question: the user's to fix, shown on the page
            raise gr.Error(str(error)) from error

    with gr.Blocks(title=f"mmreason: {model.family}", analytics_enabled=False) as demo:
        gr.Markdown(f"## Ask a {model.family} model about an image")
        with gr.Row():
            with gr.Column():
                picture = gr.Image(type="pil", label="image")
                question = gr.Textbox(label="question", placeholder="How many red shapes are there?")
                count = gr.Slider(1, 16, value=1, step=1, label=option or "samples",
                                  info=COUNT_OPTIONS.get(option), visible=option is not None)
                temperature = gr.Slider(0.1, 1.5, value=0.7, step=0.1, label="temperature (when sampling)",
                                        visible=option is not None)
                button = gr.Button("Answer", variant="primary")
            with gr.Column():
                overlay = gr.Image(type="pil", label="what the model found", format="png")
                answer_box = gr.Textbox(label="answer")
                rationale = gr.Textbox(label="rationale", lines=4)
                confidence = gr.Textbox(label="confidence (share of votes for the answer)",
                                        visible=option == "votes")
        inputs = [picture, question, count, temperature]
        outputs = [rationale, answer_box, confidence, overlay]
        button.click(answer, inputs, outputs, api_name="answer")
        question.submit(answer, inputs, outputs, api_name=False)
    return demo


def demo_command(args) -> None:
    model = load_export(args.model, args.device, args.dtype, args.adapters)
    build_demo(model, args.max_new_tokens).launch(server_port=args.port, share=args.share)
