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
        self.fault = False

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
            try:
                with open(self._paths[self._older], "wb") as f:
                    f.write(("%d %s\n" % (limit, _check(limit))).encode())
                self._older ^= 1
            except OSError:
                # Flash worn out or full. An alarm must still go out, so the number is used anyway:
                # it is unique until the next reboot, and the fault is shown and reported.
                self.fault = True
            self._limit = limit
        seq = self._next
        self._next += 1
        return seq

    def peek(self):
        return self._next


class Outbox:
    """Framed alarms waiting for the gateway's "received" ack, one file per sequence number.

    The sorted list of sequence numbers is kept in RAM, so the main loop never lists the flash
    directory; the frames themselves stay on flash and are read only to be sent.

    Bounded: when full, the oldest entry is dropped to make room for the new press and the drop is
    counted. Presses of one button minutes apart become one incident at the gateway, so the newest
    press carries the information the command center needs.

    If the flash cannot be written, the frame is kept in RAM instead (`fault` is set): the alarm
    still goes out, it only loses its protection against a reboot.
    """

    def __init__(self, directory, capacity=16):
        self._dir = directory + "/outbox"
        self.capacity = capacity
        self.dropped = 0
        self.fault = False
        self._volatile = {}
        # The newest frame stays in RAM too: it is sent in the same loop step that stored it, and
        # reading it straight back from flash would cost a file object and a buffer at the moment
        # the heap is fullest (bench/firmware_memory.py).
        self._recent_seq = -1
        self._recent = None
        if not _exists(self._dir):
            os.mkdir(self._dir)
        self.pending = []  # sorted sequence numbers; read it, change it only through put/remove
        for name in os.listdir(self._dir):
            if name.endswith(".tmp"):
                # A write cut short by power loss: the alarm never reached the network and the LED
                # never showed "sending", so the person saw no confirmation and will press again.
                os.remove(self._dir + "/" + name)
            elif name.endswith(".msg") and name[:-4].isdigit():
                self.pending.append(int(name[:-4]))
        self.pending.sort()

    def _path(self, seq):
        return "%s/%010d.msg" % (self._dir, seq)

    def seqs(self):
        """Pending sequence numbers, oldest first (a copy: callers may remove while iterating)."""
        return list(self.pending)

    def put(self, seq, frame):
        while len(self.pending) >= self.capacity:
            self.remove(self.pending[0])
            self.dropped += 1
        # Write then rename: a power cut mid-write leaves only a .tmp file, never a torn .msg that
        # would be re-sent for ever (its MAC would fail at the gateway and no ack would clear it).
        path = self._path(seq)
        try:
            with open(path + ".tmp", "wb") as f:
                f.write(frame)
            os.rename(path + ".tmp", path)
        except OSError:
            self.fault = True
            self._volatile[seq] = frame
        self.pending.append(seq)
        self.pending.sort()
        self._recent_seq = seq
        self._recent = frame

    def get(self, seq):
        if seq == self._recent_seq:
            return self._recent
        frame = self._volatile.get(seq)
        if frame is not None:
            return frame
        if seq not in self.pending:
            return None
        try:
            with open(self._path(seq), "rb") as f:
                return f.read()
        except OSError:
            return None

    def remove(self, seq):
        if seq == self._recent_seq:
            self._recent_seq = -1
            self._recent = None
        if seq in self.pending:
            self.pending.remove(seq)
        if self._volatile.pop(seq, None) is None:
            try:
                os.remove(self._path(seq))
            except OSError:
                pass

    def __contains__(self, seq):
        return seq in self.pending

    def __len__(self):
        return len(self.pending)
