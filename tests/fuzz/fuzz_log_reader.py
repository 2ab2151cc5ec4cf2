"""Coverage-guided fuzzing of the durable log reader with atheris.

    pip install atheris
    python tests/fuzz/fuzz_log_reader.py -max_total_time=300 tests/fuzz/corpus_log/

Any exception other than CorruptRecord, or a hang, is a bug. The bounded
hypothesis run in tests/test_storage_fuzz.py covers the same properties in
the normal suite.
"""

import sys

import atheris

with atheris.instrument_imports():
    from ringcast import storage


def one_input(data: bytes) -> None:
    try:
        for _kind, _id, _msg, end in storage.decode_records(data):
            assert 0 < end <= len(data)
    except storage.CorruptRecord:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
