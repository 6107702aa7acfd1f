# Flash-backed state of a button: the sequence counter and the alarm outbox (protocol.md §5, §6).
#
# Both survive a power cut at any instant. Flash wears out (on the order of 10^4-10^5 erase cycles
# per sector), so the counter is written once per block of numbers, not per message, and each alarm
# costs one file write and one delete.
import binascii
import hashlib
import os


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _check(value):
    return binascii.hexlify(hashlib.sha256(str(value).encode()).digest()[:4]).decode()


class SeqStore:
    """Per-device monotonic sequence numbers that are never reused, even across power cuts.

    Two slot files hold "<limit> <check>" lines; a reservation overwrites the older slot, so a write
    torn by a power cut destroys at most the slot being written and the other still holds the
    previous limit. Numbers below the persisted limit may be handed out; a reboot resumes at the
    highest valid limit, skipping the rest of the block.
    """

    def __init__(self, directory, block=32):
        self._paths = (directory + "/seq.a", directory + "/seq.b")
        self._block = block
        limits = [self._read(p) for p in self._paths]
        best = max(limits)
        self._next = best if best >= 0 else 0
        self._limit = self._next  # nothing reserved in this boot yet
        self._older = 0 if limits[0] <= limits[1] else 1

    def _read(self, path):
        try:
            with open(path, "rb") as f:
                parts = f.read().decode().split()
        except (OSError, UnicodeError):
            return -1
        if len(parts) != 2 or not parts[0].isdigit():
            return -1
        value = int(parts[0])
        return value if _check(value) == parts[1] else -1

    def next(self):
        if self._next >= self._limit:
            limit = self._next + self._block
            with open(self._paths[self._older], "wb") as f:
                f.write(("%d %s\n" % (limit, _check(limit))).encode())
            self._older ^= 1
            self._limit = limit
        seq = self._next
        self._next += 1
        return seq

    def peek(self):
        return self._next


class Outbox:
    """Framed alarms waiting for the gateway's "received" ack, one file per sequence number.

    Bounded: when full, the oldest entry is dropped to make room for the new press and the drop is
    counted (reported in every heartbeat). Presses of one button minutes apart become one incident
    at the gateway, so the newest press carries the information the command center needs.
    """

    def __init__(self, directory, capacity=16):
        self._dir = directory + "/outbox"
        self.capacity = capacity
        self.dropped = 0
        if not _exists(self._dir):
            os.mkdir(self._dir)
        for name in os.listdir(self._dir):
            if name.endswith(".tmp"):
                # A write cut short by power loss: the alarm never reached the network and the LED
                # never showed "sending", so the person saw no confirmation and will press again.
                os.remove(self._dir + "/" + name)

    def _path(self, seq):
        return "%s/%010d.msg" % (self._dir, seq)

    def seqs(self):
        out = []
        for name in os.listdir(self._dir):
            if name.endswith(".msg"):
                out.append(int(name[:-4]))
        out.sort()
        return out

    def put(self, seq, frame):
        pending = self.seqs()
        while len(pending) >= self.capacity:
            self.remove(pending.pop(0))
            self.dropped += 1
        # Write then rename: a power cut mid-write leaves only a .tmp file, never a torn .msg that
        # would be re-sent for ever (its MAC would fail at the gateway and no ack would clear it).
        path = self._path(seq)
        with open(path + ".tmp", "wb") as f:
            f.write(frame)
        os.rename(path + ".tmp", path)

    def get(self, seq):
        try:
            with open(self._path(seq), "rb") as f:
                return f.read()
        except OSError:
            return None

    def remove(self, seq):
        try:
            os.remove(self._path(seq))
        except OSError:
            pass

    def __len__(self):
        return len(self.seqs())
