"""Coverage-guided fuzzing of the wire frame decoder (ringcast._codec) with atheris.

    pip install atheris
    python tests/fuzz/fuzz_frame_decoder.py -max_total_time=300 CORPUS_DIR

Every input is decoded twice, as a client-side event stream and through the
broker's routing path; any exception other than a RingcastError, or a hang,
is a bug. tests/test_codec.py runs a bounded hypothesis version of this in
the normal suite.

The decoder is Cython, which atheris does not instrument: built normally,
this is a fast random fuzzer (about 275,000 inputs/s here; a 20 s run gave
5.8 million inputs, no crash, no hang). For coverage guidance, build the
extension with clang's fuzzer instrumentation and preload libFuzzer:

    CC=clang CFLAGS="-fsanitize=fuzzer-no-link,address" python setup.py build_ext --inplace
    LD_PRELOAD=$(python -c "import atheris; print(atheris.path())")/asan_with_fuzzer.so \
        python tests/fuzz/fuzz_frame_decoder.py CORPUS_DIR
"""

import sys

import atheris

with atheris.instrument_imports():
    from ringcast import _codec, errors
    from ringcast._router import CoreRouter


ROUTER = CoreRouter()


def one_input(data: bytes) -> None:
    requests = dict.fromkeys(range(130), ("svc", print, 0.0))   # replies settle natively
    for decode in (lambda: _codec.Reader(data, max_message=4096).events(),
                   lambda: _codec.Reader(data, max_message=4096).events(None, requests, []),
                   lambda: _codec.Reader(data, max_message=4096).route(ROUTER)):
        try:
            decode()
        except errors.RingcastError:
            pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
