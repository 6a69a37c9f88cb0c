"""Face-landmark worker, run by the mediapipe environment (.venv-mp), never imported by the main one.

Protocol (one JSON object per line): reads image paths on stdin, one per line, and answers each with
``{"path": ..., "size": [H, W], "faces": [[[x, y], ... 468 points], ...]}`` (x, y normalised to [0, 1], as
MediaPipe returns them) or ``{"path": ..., "error": "..."}`` when the image cannot be read. A first line
``{"ready": true, "mediapipe": <version>}`` tells the parent the model loaded.

Detector settings are the original lip_mask_extractor.py's: FaceMesh(static_image_mode=True, max_num_faces=10).
This file depends only on mediapipe, OpenCV and the standard library so it runs under numpy<2.
"""

import json
import sys


def main() -> None:
    import cv2
    import mediapipe as mp

    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=10)
    out = sys.stdout
    out.write(json.dumps({"ready": True, "mediapipe": mp.__version__}) + "\n")
    out.flush()
    for line in sys.stdin:
        path = line.rstrip("\n")
        if not path:
            continue
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            reply = {"path": path, "error": "OpenCV could not read the image"}
        else:
            h, w = image.shape[:2]
            result = mesh.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            faces = [[[round(p.x, 6), round(p.y, 6)] for p in face.landmark] for face in (result.multi_face_landmarks or [])]
            reply = {"path": path, "size": [h, w], "faces": faces}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
