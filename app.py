"""Start R2D3 Studio: python app.py [--host 127.0.0.1] [--port 7860] [--share] [--runs-dir outputs/runs] [--diffsplat DIR ...]."""

import argparse
from pathlib import Path

from app.catalogue import set_runs_dir
from app.generate import ModelSources, configure
from app.ui import build_demo


def _named_paths(items: list[str], parser: argparse.ArgumentParser, flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in ("diffsplat-pas", "diffsplat-sd15"):
            parser.error(f"{flag} takes diffsplat-pas=PATH or diffsplat-sd15=PATH, got {item!r}")
        out[name] = path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public Gradio link")
    parser.add_argument("--runs-dir", type=Path, default=Path("outputs") / "runs",
                        help="where finetunes are saved and listed (uploaded LoRAs go to its sibling uploads/)")
    parser.add_argument("--diffsplat", type=Path, help="DiffSplat's checkpoint download folder (offers its models in Generate)")
    parser.add_argument("--text-encoder", action="append", default=[], metavar="MODEL=DIR",
                        help="text encoder folder per DiffSplat model, e.g. diffsplat-pas=~/t5 (default: the Hugging Face cache)")
    parser.add_argument("--prompt-cache", action="append", default=[], metavar="MODEL=FILE",
                        help="precomputed prompt embeddings per DiffSplat model, instead of its text encoder")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="DiffSplat denoiser precision")
    parser.add_argument("--device", help="cpu or cuda, for the tiny model, finetunes and DiffSplat (default: cuda when available)")
    args = parser.parse_args()
    set_runs_dir(args.runs_dir)
    configure(ModelSources(args.diffsplat, _named_paths(args.text_encoder, parser, "--text-encoder"),
                           _named_paths(args.prompt_cache, parser, "--prompt-cache"), args.dtype, args.device))
    build_demo().queue().launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
