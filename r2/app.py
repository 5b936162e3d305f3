"""`r2 app`: a local web app to find moments in your videos by typing (Gradio).

    r2 app --checkpoint runs/mine [--videos DIR] [--anno val.jsonl] [--host 127.0.0.1] [--port 7860]

Upload a video or pick one of `--videos`, type one query per line, and get for each query
its top moments as buttons that seek the player there, the saliency curve with the moments
shaded (and the ground truth when the video and query are in an `--anno` file), a strip of
the moments' frames, and the result as JSON to download. A video is encoded once (by
content hash, r2.app_engine), so further queries answer in well under a second.

Private by default: binds to 127.0.0.1 (`--host 0.0.0.0` to share on a network, with a
warning), no telemetry (Gradio analytics off), nothing loaded from the internet (fonts,
scripts and images all come from the app), uploads limited to `--max-upload-mb`, and
files served only from the upload area (a temporary folder removed at exit) and `--videos`.
Gradio is an optional extra: `pip install "r2-tuning[app]"`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from r2.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 2048
DEFAULT_TOP = 5
MAX_SUGGESTIONS = 3  # annotated queries put in an empty query box
PAGE_JS = """
() => {
  document.addEventListener('click', (event) => {
    const el = event.target.closest('[data-seek]');
    if (!el) return;
    const video = document.querySelector('#r2-player video');
    if (!video) return;
    video.currentTime = parseFloat(el.dataset.seek);
    video.play().catch(() => {});
  });
}
"""


def _import_gradio(upload_dir: Path):
    """Import Gradio with telemetry off and its upload area set (env read at import)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["GRADIO_TEMP_DIR"] = str(upload_dir)
    try:
        import gradio as gr
    except ImportError:
        raise UsageError(
            "the web app needs Gradio: pip install 'r2-tuning[app]' (or `make install`)"
        ) from None
    return gr


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class _Handlers:
    """The page's event handlers (engine calls, errors shown in the page)."""

    def __init__(self, gr, engine, results_dir: Path):
        self.gr, self.engine, self.results_dir = gr, engine, results_dir

    def _progress(self, progress):
        return lambda done, total: progress((done, total), desc="encoding the video", unit="clips")

    def on_video(self, path, text, progress):
        """Encode a new video; an empty query box gets the video's annotated queries."""
        from r2.app_render import clock, status_html

        if not path:
            return status_html("Upload a video or pick one from the library."), text
        try:
            _, video = self.engine.encode(path, self._progress(progress))
        except (UsageError, OSError) as err:  # VideoError is a UsageError
            return status_html(f"error: {_one_line(err)}", error=True), text
        known = self.engine.truth.queries(Path(path).stem) if self.engine.truth else []
        if known and not (text or "").strip():
            text = "\n".join(known[:MAX_SUGGESTIONS])
        message = (
            f"Ready: {Path(path).name}, {clock(video.duration)}, "
            f"{len(video.features)} clips. Type queries, one per line."
        )
        if known:
            message += f" ({len(known)} annotated queries in --anno)"
        return status_html(message), text

    def on_ask(self, path, text, top, progress):
        from r2.app_render import answer_html, status_html
        from r2.export import predictions_json
        from r2.files import write_text_atomic

        if not path:
            return status_html("error: upload a video first", error=True), "", None
        queries = [line for line in (text or "").splitlines() if line.strip()]
        try:
            answer = self.engine.ask(path, queries, int(top), self._progress(progress))
        except (UsageError, ValueError, OSError) as err:
            return status_html(f"error: {_one_line(err)}", error=True), "", None
        name = f"{Path(path).stem}-{answer.key[:10]}-{time.strftime('%H%M%S')}.json"
        json_path = write_text_atomic(
            self.results_dir / name, predictions_json(answer.predictions, Path(path).name)
        )
        s = answer.seconds
        message = (
            f"{len(queries)} quer{'y' if len(queries) == 1 else 'ies'} answered in "
            f"{s['predict'] + s['frames']:.2f} s"
            + (f" (video encoded in {s['encode']:.1f} s)" if s["encode"] > 0.5 else "")
        )
        return status_html(message), answer_html(answer, int(top)), str(json_path)

    def on_pick(self, name):
        return str(self.engine.library_path(name)) if name else None


def build_app(gr, engine, results_dir: Path):
    """The Gradio Blocks of the app."""
    h = _Handlers(gr, engine, results_dir)
    with gr.Blocks(title="r2: find moments in videos", analytics_enabled=False) as demo:
        gr.Markdown("## r2: find the moments of a video that match what you type")
        with gr.Row():
            with gr.Column(scale=3):
                video = gr.Video(
                    label="Video", sources=["upload"], elem_id="r2-player", interactive=True
                )
                if engine.library():
                    pick = gr.Dropdown(
                        engine.library(),
                        label="…or pick one of --videos",
                        value=None,
                        elem_id="r2-library",
                    )
                    pick.change(h.on_pick, pick, video)
            with gr.Column(scale=2):
                text = gr.Textbox(
                    label="Queries, one per line",
                    lines=4,
                    elem_id="r2-queries",
                    placeholder="a man opens the fridge",
                )
                top = gr.Slider(1, 10, value=DEFAULT_TOP, step=1, label="Moments per query")
                ask = gr.Button("Find moments", variant="primary", elem_id="r2-ask")
                status = gr.HTML(elem_id="r2-status")
                download = gr.File(label="Result (JSON)", elem_id="r2-json", interactive=False)
        results = gr.HTML(elem_id="r2-results")

        def on_video(path, queries, progress=gr.Progress()):
            return h.on_video(path, queries, progress)

        def on_ask(path, queries, n, progress=gr.Progress()):
            return h.on_ask(path, queries, n, progress)

        video.change(on_video, [video, text], [status, text])
        ask.click(on_ask, [video, text, top], [status, results, download])
    return demo


def _check_host(host: str) -> None:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return
    if host != "localhost":
        log.warning("serving on %s: anyone who can reach this machine can use the app", host)


def run_app(
    predictor,
    *,
    videos_dir=None,
    truth=None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB,
    cache_mb: int | None = None,
    allow_partial: bool = False,
) -> None:
    """Serve the app until interrupted (the upload area is removed at exit)."""
    from r2.app_engine import DEFAULT_CACHE_MB, AppEngine
    from r2.app_render import CSS

    _check_host(host)
    upload_dir = Path(tempfile.mkdtemp(prefix="r2-app-"))
    with contextlib.suppress(ValueError):  # (only possible in the main thread)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` removes the uploads too
    try:
        gr = _import_gradio(upload_dir)
        engine = AppEngine(
            predictor,
            videos_dir=videos_dir,
            truth=truth,
            cache_mb=cache_mb or DEFAULT_CACHE_MB,
            allow_partial=allow_partial,
        )
        demo = build_app(gr, engine, upload_dir / "results")
        allowed = [str(Path(videos_dir).resolve())] if videos_dir else []
        print(f"r2 app: http://{host}:{port} (Ctrl-C to stop)", flush=True)
        demo.queue(default_concurrency_limit=1).launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            max_file_size=f"{int(max_upload_mb)}mb",
            allowed_paths=allowed,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            show_error=False,
            quiet=True,
            css=CSS,
            js=PAGE_JS,
            footer_links=[],
            run_history=False,
        )
    finally:
        shutil.rmtree(upload_dir, ignore_errors=True)
