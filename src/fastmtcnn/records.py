"""The JSON Lines records of a video job: one record per frame, then one end record per source.

This is the schema of `fastmtcnn video --json` (docs/video.md), written by
`video.VideoJob`; a program with its own loop over `StreamDetector` writes the
same records with these functions. Records of several sources in one stream
carry `"source": NAME` first.

    frame: {"frame", "time", "width", "height", ["mode"], "faces": [{"box", "score", "landmarks"}]}
    end:   {"end", "frames", "faces", "mean_fps", ["first_s"], "read", "dropped", "reconnects", ["decoder"], ["error"]}

`mean_fps` counts from the job's start (start-up included); `first_s` is the
seconds from the start to the first result, so a short clip's rate after its
start-up is (frames - 1) / (frames / mean_fps - first_s).
"""
from __future__ import annotations


def mode(tracked: bool | None) -> str | None:
    """A frame's mode as records and the status panel name it: "track", "full", or None (no tracking)."""
    return None if tracked is None else "track" if tracked else "full"


def frame_record(result, *, source: str | None = None) -> dict:
    """The record of one `streams.StreamResult`: frame number and time, frame size, mode, faces."""
    h, w = (int(v) for v in result.image.shape[:2])
    rec = {"source": source} if source else {}
    rec.update(frame=result.index, time=round(result.time, 4), width=w, height=h)
    if result.tracked is not None:
        rec["mode"] = mode(result.tracked)
    rec["faces"] = result.faces.to_list()
    return rec


def end_text(stats) -> str:
    """How a source ended, in its end record's words: its error, a file cut short, or how reading stopped."""
    if stats.truncated:
        return f"file ended after {stats.frames} of {stats.expected_frames} frames (truncated or corrupt)"
    return stats.error or stats.end or "end"


def end_record(stats, *, source: str | None = None) -> dict:
    """The last record of a source, from its `streams.SourceStats`."""
    rec = {"source": source} if source else {}
    rec.update(end=end_text(stats), frames=stats.frames, faces=stats.faces, mean_fps=round(stats.fps, 3))
    if stats.first_result_s is not None:
        rec["first_s"] = round(stats.first_result_s, 3)
    rec.update(read=stats.read, dropped=stats.dropped, reconnects=stats.reconnects)
    if stats.decoder:
        rec["decoder"] = stats.decoder
    if stats.error:
        rec["error"] = stats.error
    return rec
