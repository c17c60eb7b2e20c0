#!/usr/bin/env python3
"""cutfs: an in-memory FUSE file system that simulates what a power cut loses.

Usage:  python3 cutfs.py BACKING MOUNTPOINT [--ext4]

BACKING holds the "disk" as it was at power-on. Its tree is loaded into memory
at start and served at MOUNTPOINT from memory only; BACKING is not touched
until the cut, which replaces its contents with the post-cut disk image.

Protocol (stdin: one command a line; stdout: one reply line each):
  (at start)    -> "ready"             once mounted and serving
  cut MODE SEED [TEAR] -> "cut ok k=v ..."
                   freeze, compute the image, rewrite BACKING. TEAR, a path in
                   the mount, names one file whose last fsynced write is torn
                   too (a card that acknowledged a flush it had not finished)
                   ("cut error ..."    on a bad command or a second cut)
  stats         -> "stats fsyncs=N fdatasyncs=N fsyncdirs=N writes=N bytes_written=N"
  exit / EOF    -> lazy unmount (umount -l, else fusermount3 -uz), os._exit(0).
                   SIGTERM, SIGINT and SIGHUP do the same.
Exit status: 3 when mfusepy or libfuse3 cannot be loaded (the caller skips),
1 when BACKING cannot be read or mounting fails, 2 on bad usage.

The model (inodes, not paths):
* A regular file has `cur` (what processes see), `durable` (what is on the
  card) and `pending`, the ordered data ops since its last fsync:
  ('write', offset, bytes) and ('truncate', size). fsync and fdatasync make
  durable = cur and clear pending; flush and release make nothing durable.
* Namespace/attribute changes (create, mkdir, symlink, link, unlink, rmdir,
  rename, chmod, chown) go, in inode terms, into one global journal. The
  durable namespace (dir ino -> {name: ino}) and durable (mode, uid, gid) per
  inode are the power-on state with the committed journal prefix replayed.
  A directory fsync commits the whole journal; with --ext4 a file
  fsync/fdatasync commits it too (ext4's single journal). Replaying the whole
  journal gives the current tree, so any prefix is a tree that really existed.
* The cut, with rng = random.Random(SEED):
  - metadata: MODE drop keeps no uncommitted op; the other modes replay a
    random prefix (length uniform in 0..len) of the uncommitted journal.
  - data, per file reachable in that namespace (ascending ino), from `durable`:
      drop:   no pending op applied.
      prefix: the first k pending ops (k uniform 0..len); if k < len and op
              k+1 is a write, only its first j 512-byte sectors (aligned to
              absolute offsets, j uniform 0..sectors touched) are applied.
      torn:   old = durable, new = cur. Each 4096-byte page touched by a
              pending write or a size change becomes the old page, the new
              page, or a per-512-byte-sector old/new mix; the size is old or
              new at random (zero padded).
      mixed:  drop, prefix or torn, chosen at random per file.
  A file whose create was never committed is unreachable, hence lost.
* Freezing: from the cut on, every handler blocks without touching state or
  replying. Two exceptions, both invisible to any live process: a blocked
  request whose caller is dying (SIGKILL pending, or exiting) gets EINTR, else
  the kernel would keep the killed daemon in D state until we exit; and
  release/releasedir (sent asynchronously after close) are acknowledged so
  they do not pin libfuse's worker threads.
* Limits: flock and fcntl locks are kept by the kernel (no lock op is
  defined). fstat/fchmod/fchown/futimens of an open file that has no name
  left give ESTALE (libfuse's path API with hard_remove); read, write,
  ftruncate and fsync of such a file work. No xattrs, mknod or fallocate
  (ENOSYS). Times are kept in memory only.
"""
import ctypes.util
import errno
import functools
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
SECTOR, PAGE = 512, 4096
MODES = ('drop', 'prefix', 'torn', 'mixed')
EXITING = threading.Event()


def need(cond, code):
    """Raise the errno `code` (mfusepy turns it into the reply) unless cond."""
    if not cond:
        raise OSError(code, os.strerror(code))


class Node:
    """One inode. `nlink` counts its names in the current tree (dirs: 0 or 1)."""
    __slots__ = ('ino', 'mode', 'uid', 'gid', 'atime', 'mtime', 'ctime', 'nlink', 'opens',
                 'entries', 'parent', 'cur', 'durable', 'pending', 'target',
                 'prev_durable', 'last_synced')

    def __init__(self, ino, mode, uid, gid):
        self.ino, self.mode, self.uid, self.gid = ino, mode, uid, gid
        self.atime = self.mtime = self.ctime = time.time_ns()
        self.nlink = self.opens = 0
        self.entries = {} if stat.S_ISDIR(mode) else None   # name -> Node
        self.parent = None                                   # dirs only
        self.cur, self.durable, self.pending = bytearray(), b'', []
        # What the last fsync that changed anything made durable: the
        # durable bytes before it and the ops it committed (for TEAR).
        self.prev_durable, self.last_synced = b'', []
        self.target = None                                   # symlinks only

    def isdir(self):
        return stat.S_ISDIR(self.mode)


def apply_op(img, o):
    """Apply one pending data op to a bytearray image."""
    if o[0] == 'write':
        off, data = o[1], o[2]
        if off > len(img):
            img.extend(bytes(off - len(img)))   # a hole reads as zeros
        img[off:off + len(data)] = data
    elif o[1] < len(img):
        del img[o[1]:]
    else:
        img.extend(bytes(o[1] - len(img)))


def replay(dns, dattr, o):
    """Apply one journal op to a durable namespace and its attributes."""
    if o[0] == 'new':                               # create, mkdir, symlink
        _, parent, name, ino, mode, uid, gid = o
        dns[parent][name] = ino
        dattr[ino] = (mode, uid, gid)
        if stat.S_ISDIR(mode):
            dns[ino] = {}
    elif o[0] == 'link':
        dns[o[1]][o[2]] = o[3]
    elif o[0] == 'unlink':                          # unlink, rmdir
        del dns[o[1]][o[2]]
    elif o[0] == 'rename':
        _, sp, sn, dp, dn, exchange = o
        moved = dns[sp].pop(sn)
        if exchange:
            dns[sp][sn] = dns[dp][dn]
        dns[dp][dn] = moved                         # replaces any target
    elif o[0] == 'attr':                            # chmod, chown
        dattr[o[1]] = o[2:]


def pid_dying(pid):
    """True when process/thread `pid` can never run user code again."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            s = f.read()
        fields = s[s.rindex(b')') + 2:].split()
        if fields[0] in (b'Z', b'X') or int(fields[6]) & 0x4:       # PF_EXITING
            return True
        with open(f'/proc/{pid}/status', 'rb') as f:
            return any(line.startswith((b'SigPnd:', b'ShdPnd:')) and int(line.split()[1], 16) & 0x100
                       for line in f)                                # SIGKILL pending
    except FileNotFoundError:
        return True
    except (OSError, ValueError, IndexError):
        return False


def op(release=False):
    """Run a handler under the global lock; once frozen, never come back."""
    def deco(fn):
        @functools.wraps(fn)   # keeps the signature mfusepy inspects (create)
        def wrapper(self, *args):
            if release and self.frozen:
                return 0
            self.mutex.acquire()
            if self.frozen:
                self.mutex.release()
                if release:
                    return 0
                self.block_forever()
            try:
                return fn(self, *args)
            finally:
                self.mutex.release()
        return wrapper
    return deco


class CutFS:
    """mfusepy Operations. NB: every attribute named like a FUSE op (lock,
    flock, ...) would be registered as one, hence `mutex`."""
    use_ns = True   # mfusepy: times as integer nanoseconds

    def __init__(self, backing, ext4, context):
        self.backing, self.ext4, self.context = backing, ext4, context
        self.mutex, self.frozen, self.ready = threading.Lock(), False, threading.Event()
        self.nodes = {}           # ino -> Node: every inode that may still matter
        self.orphans = set()      # inos with nlink == 0, freed by gc()
        self.fhs = {}             # fh -> (Node, open flags)
        self.next_ino = self.next_fh = 1
        self.journal = []         # uncommitted namespace/attribute ops
        self.dns, self.dattr = {}, {}   # durable namespace and attributes
        self.stats = dict(fsyncs=0, fdatasyncs=0, fsyncdirs=0, writes=0, bytes_written=0)
        self.root = self.load()

    def new_node(self, mode, uid, gid):
        node = self.nodes[self.next_ino] = Node(self.next_ino, mode, uid, gid)
        self.next_ino += 1
        return node

    def load(self):
        """The power-on state: BACKING's tree, current and durable alike."""
        st = os.lstat(self.backing)
        root = self.new_node(st.st_mode, st.st_uid, st.st_gid)
        root.nlink = 1
        self.dns[root.ino], self.dattr[root.ino] = {}, (root.mode, root.uid, root.gid)
        seen, todo = {}, [(self.backing, root)]   # seen: (dev, ino) -> Node, for hard links
        while todo:
            path, dnode = todo.pop()
            for e in sorted(os.scandir(path), key=lambda e: e.name):
                st = e.stat(follow_symlinks=False)
                node = seen.get((st.st_dev, st.st_ino))
                if node is None:
                    if stat.S_IFMT(st.st_mode) not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                        print(f'cutfs: skipping special file {e.path}', file=sys.stderr)
                        continue
                    node = self.new_node(st.st_mode, st.st_uid, st.st_gid)
                    node.atime, node.mtime, node.ctime = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
                    self.dattr[node.ino] = (st.st_mode, st.st_uid, st.st_gid)
                    if node.isdir():
                        node.parent, self.dns[node.ino] = dnode, {}
                        todo.append((e.path, node))
                    elif stat.S_ISLNK(st.st_mode):
                        node.target = os.readlink(e.path)
                    else:
                        with open(e.path, 'rb') as f:
                            node.durable = f.read()
                        node.cur = bytearray(node.durable)
                        seen[(st.st_dev, st.st_ino)] = node
                node.nlink += 1
                dnode.entries[e.name] = node
                self.dns[dnode.ino][e.name] = node.ino
        return root

    def block_forever(self):
        """Frozen (called without the mutex): never reply, unless the caller is
        dying (see the module docstring)."""
        pid = self.context()[2]
        while not (pid > 0 and pid_dying(pid)):
            time.sleep(0.05)
        need(False, errno.EINTR)

    # ---- helpers, called with the mutex held ----------------------------
    def resolve(self, path):
        node = self.root
        for name in filter(None, path.split('/')):
            need(node.isdir(), errno.ENOTDIR)
            node = node.entries.get(name)
            need(node is not None, errno.ENOENT)
        return node

    def parent_of(self, path):
        head, _, name = path.rstrip('/').rpartition('/')
        need(name, errno.EBUSY)
        parent = self.resolve(head)
        need(parent.isdir(), errno.ENOTDIR)
        return parent, name

    def target(self, path, fh):
        """The node of an open handle if given (path is NULL then), else of path."""
        if fh:
            need(fh in self.fhs, errno.EBADF)
            return self.fhs[fh][0]
        need(path is not None, errno.EBADF)
        return self.resolve(path)

    def new_fh(self, node, flags):
        fh, self.next_fh = self.next_fh, self.next_fh + 1
        self.fhs[fh] = (node, flags)
        node.opens += 1
        return fh

    def add_entry(self, parent, name, node):
        parent.entries[name] = node
        node.nlink += 1
        self.orphans.discard(node.ino)
        if node.isdir():
            node.parent = parent
        parent.mtime = parent.ctime = time.time_ns()

    def drop_link(self, node):
        node.nlink = 0 if node.isdir() else node.nlink - 1
        node.ctime = time.time_ns()
        if node.nlink == 0:
            self.orphans.add(node.ino)

    def make(self, path, mode, target=None):
        parent, name = self.parent_of(path)
        need(name not in parent.entries, errno.EEXIST)
        uid, gid, _ = self.context()
        node = self.new_node(mode, uid, gid)     # durable once its 'new' is replayed
        node.target = target
        self.add_entry(parent, name, node)
        self.journal.append(('new', parent.ino, name, node.ino, mode, uid, gid))
        return node

    def set_size(self, node, size):
        need(not node.isdir(), errno.EISDIR)
        need(stat.S_ISREG(node.mode), errno.EINVAL)
        if size != len(node.cur):
            self.data_op(node, ('truncate', size))

    def data_op(self, node, o):
        apply_op(node.cur, o)
        node.pending.append(o)
        node.mtime = node.ctime = time.time_ns()

    def commit(self):
        for o in self.journal:
            replay(self.dns, self.dattr, o)
        self.journal.clear()
        self.gc()

    def gc(self):
        """Free nameless, closed inodes once the durable tree agrees (no journal)."""
        if self.journal:
            return
        for ino in [i for i in self.orphans if self.nodes[i].opens == 0]:
            self.orphans.discard(ino)
            del self.nodes[ino]
            self.dns.pop(ino, None)
            self.dattr.pop(ino, None)

    def remove(self, path, isdir):
        parent, name = self.parent_of(path)
        node = parent.entries.get(name)
        need(node is not None, errno.ENOENT)
        need(node.isdir() == isdir, errno.ENOTDIR if isdir else errno.EISDIR)
        need(not (isdir and node.entries), errno.ENOTEMPTY)
        del parent.entries[name]
        parent.mtime = parent.ctime = time.time_ns()
        self.drop_link(node)
        self.journal.append(('unlink', parent.ino, name))

    def set_attr(self, node, mode, uid, gid):
        node.mode, node.uid, node.gid, node.ctime = mode, uid, gid, time.time_ns()
        self.journal.append(('attr', node.ino, mode, uid, gid))

    # ---- FUSE operations: raise OSError on failure; None means 0 to mfusepy ----
    def init_with_config(self, conn, config):
        if config is not None:   # no caching: the kernel asks us every time
            config.attr_timeout = config.entry_timeout = config.negative_timeout = 0.0
            config.use_ino = config.hard_remove = config.nullpath_ok = 1
        self.ready.set()

    @op()
    def getattr(self, path, fh=None):
        n = self.target(path, fh)
        if n.isdir():
            size, nlink = 4096, 2 + sum(1 for c in n.entries.values() if c.isdir())
        else:
            size, nlink = len(os.fsencode(n.target)) if n.target is not None else len(n.cur), n.nlink
        return dict(st_ino=n.ino, st_mode=n.mode, st_nlink=nlink, st_uid=n.uid, st_gid=n.gid,
                    st_size=size, st_blksize=PAGE, st_blocks=(size + 511) // 512,
                    st_atime=n.atime, st_mtime=n.mtime, st_ctime=n.ctime)

    @op()
    def access(self, path, amode):
        self.resolve(path)

    @op()
    def statfs(self, path):   # 1 GiB free
        return dict(f_bsize=PAGE, f_frsize=PAGE, f_blocks=1 << 19, f_bfree=1 << 18, f_bavail=1 << 18,
                    f_files=1 << 20, f_ffree=1 << 19, f_favail=1 << 19, f_namemax=255)

    @op()
    def opendir(self, path):
        node = self.resolve(path)
        need(node.isdir(), errno.ENOTDIR)
        return self.new_fh(node, os.O_RDONLY)

    @op()
    def readdir(self, path, fh):
        n = self.target(path, fh)
        return [('.', dict(st_mode=n.mode, st_ino=n.ino), 0),
                ('..', dict(st_mode=stat.S_IFDIR, st_ino=(n.parent or n).ino), 0)] + \
            [(name, dict(st_mode=c.mode, st_ino=c.ino), 0) for name, c in n.entries.items()]

    @op(release=True)
    def release(self, path, fh):
        node, _ = self.fhs.pop(fh, (None, 0))
        if node is not None:
            node.opens -= 1
            self.gc()

    releasedir = release

    @op()
    def open(self, path, flags):
        node = self.resolve(path)
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        need(not (node.isdir() and writing), errno.EISDIR)
        if flags & os.O_TRUNC and writing:
            self.set_size(node, 0)
        return self.new_fh(node, flags)

    @op()
    def create(self, path, mode, flags):
        parent, name = self.parent_of(path)
        node = parent.entries.get(name)
        if node is None:
            node = self.make(path, stat.S_IFREG | (mode & 0o7777))
        else:                                    # the kernel mostly sends open then
            need(not flags & os.O_EXCL, errno.EEXIST)
            need(not node.isdir(), errno.EISDIR)
            if flags & os.O_TRUNC:
                self.set_size(node, 0)
        return self.new_fh(node, flags)

    @op()
    def read(self, path, size, offset, fh):
        node = self.target(None, fh)
        need(not node.isdir(), errno.EISDIR)
        return bytes(node.cur[offset:offset + size])

    @op()
    def write(self, path, data, offset, fh):
        need(fh in self.fhs, errno.EBADF)
        node, flags = self.fhs[fh]
        if flags & os.O_APPEND:
            offset = len(node.cur)
        if data:
            self.data_op(node, ('write', offset, bytes(data)))
        self.stats['writes'] += 1
        self.stats['bytes_written'] += len(data)
        return len(data)

    @op()
    def truncate(self, path, length, fh=None):
        self.set_size(self.target(path, fh), length)

    @op()
    def flush(self, path, fh):
        self.target(None, fh)

    @op()
    def fsync(self, path, datasync, fh):
        node = self.target(None, fh)
        if node.isdir():                         # fsync received on a directory handle
            self.stats['fsyncdirs'] += 1
            return self.commit()
        self.stats['fdatasyncs' if datasync else 'fsyncs'] += 1
        if node.pending:
            node.prev_durable, node.last_synced = node.durable, node.pending
            node.durable, node.pending = bytes(node.cur), []
        if self.ext4:
            self.commit()

    @op()
    def fsyncdir(self, path, datasync, fh):
        self.stats['fsyncdirs'] += 1
        self.commit()

    @op()
    def mkdir(self, path, mode):
        self.make(path, stat.S_IFDIR | (mode & 0o7777))

    @op()
    def symlink(self, target, source):   # mfusepy: the link is `target`, its contents `source`
        self.make(target, stat.S_IFLNK | 0o777, source)

    @op()
    def readlink(self, path):
        node = self.resolve(path)
        need(node.target is not None, errno.EINVAL)
        return node.target

    @op()
    def link(self, target, source):      # mfusepy: `target` is the new name of `source`
        node = self.resolve(source)
        need(not node.isdir(), errno.EPERM)
        parent, name = self.parent_of(target)
        need(name not in parent.entries, errno.EEXIST)
        self.add_entry(parent, name, node)
        node.ctime = time.time_ns()
        self.journal.append(('link', parent.ino, name, node.ino))

    @op()
    def unlink(self, path):
        return self.remove(path, False)

    @op()
    def rmdir(self, path):
        return self.remove(path, True)

    @op()
    def rename(self, old, new, flags=0):
        need(flags in (0, RENAME_NOREPLACE, RENAME_EXCHANGE), errno.EINVAL)
        sp, sn = self.parent_of(old)
        node = sp.entries.get(sn)
        need(node is not None, errno.ENOENT)
        dp, dn = self.parent_of(new)
        tgt = dp.entries.get(dn)
        need(not (tgt and flags == RENAME_NOREPLACE), errno.EEXIST)
        need(tgt or flags != RENAME_EXCHANGE, errno.ENOENT)
        if tgt is node:                          # same inode: POSIX says do nothing
            return 0

        def inside(a, d):                        # is d a or below a?
            while d is not None and d is not a:
                d = d.parent
            return d is a
        need(not (node.isdir() and inside(node, dp)), errno.EINVAL)
        if flags == RENAME_EXCHANGE:
            need(not (tgt.isdir() and inside(tgt, sp)), errno.EINVAL)
            sp.entries[sn] = tgt
            if tgt.isdir():
                tgt.parent = sp
        else:
            if tgt is not None:
                need(tgt.isdir() or not node.isdir(), errno.ENOTDIR)
                need(node.isdir() or not tgt.isdir(), errno.EISDIR)
                need(not (tgt.isdir() and tgt.entries), errno.ENOTEMPTY)
                self.drop_link(tgt)
            del sp.entries[sn]
        dp.entries[dn] = node
        if node.isdir():
            node.parent = dp
        sp.mtime = sp.ctime = dp.mtime = dp.ctime = node.ctime = time.time_ns()
        self.journal.append(('rename', sp.ino, sn, dp.ino, dn, flags == RENAME_EXCHANGE))

    @op()
    def chmod(self, path, mode, fh=None):
        n = self.target(path, fh)
        return self.set_attr(n, stat.S_IFMT(n.mode) | (mode & 0o7777), n.uid, n.gid)

    @op()
    def chown(self, path, uid, gid, fh=None):
        n = self.target(path, fh)
        return self.set_attr(n, n.mode, n.uid if uid == -1 else uid, n.gid if gid == -1 else gid)

    @op()
    def utimens(self, path, times=None, fh=None):   # kept in memory, never journaled
        node, now = self.target(path, fh), time.time_ns()
        atime, mtime = times or ('now', 'now')
        node.atime = now if atime == 'now' else node.atime if atime is None else atime
        node.mtime = now if mtime == 'now' else node.mtime if mtime is None else mtime
        node.ctime = now

    # ---- the cut --------------------------------------------------------
    def cut(self, mode, seed, tear=None):
        """Freeze, compute the post-cut image, rewrite BACKING; returns the summary."""
        rng = random.Random(seed)
        s = dict(mode=mode, files=0, files_with_unsynced_data=0, writes_kept=0, writes_dropped=0,
                 torn_writes=0, pages_old=0, pages_new=0, pages_torn=0)
        with self.mutex:
            self.frozen = True                   # from here on, every handler blocks
            torn_ino = None
            if tear is not None:
                # The file's last fsync did not really happen: its ops are
                # pending again, before any written since, and the file is
                # cut in prefix mode (a prefix kept, the write in flight torn).
                try:
                    node = self.resolve(tear)
                except OSError:
                    node = None
                if node is not None and node.last_synced:
                    node.pending = node.last_synced + node.pending
                    node.durable = node.prev_durable
                    torn_ino = node.ino
                s['tore_last_sync_of'] = tear if torn_ino is not None else 'nothing'
            dns, dattr = {k: dict(v) for k, v in self.dns.items()}, dict(self.dattr)
            kept = 0 if mode == 'drop' else rng.randint(0, len(self.journal))
            for o in self.journal[:kept]:
                replay(dns, dattr, o)
            s['meta_ops_uncommitted'], s['meta_ops_kept'] = len(self.journal), kept
            reachable, todo = set(), [self.root.ino]
            while todo:
                for ino in dns[todo.pop()].values():
                    if ino not in reachable and stat.S_ISDIR(dattr[ino][0]):
                        todo.append(ino)
                    reachable.add(ino)
            images = {}
            for ino in sorted(reachable):
                if stat.S_ISREG(self.nodes[ino].mode):
                    s['files'] += 1
                    m = 'prefix' if ino == torn_ino else mode
                    images[ino] = self.file_image(self.nodes[ino], m, rng, s)
        self.write_backing(dns, dattr, images)
        return ' '.join(f'{k}={v}' for k, v in s.items())

    def file_image(self, node, mode, rng, s):
        ops = node.pending
        if not ops:
            return node.durable
        s['files_with_unsynced_data'] += 1
        nwrites = sum(1 for o in ops if o[0] == 'write')
        if mode == 'mixed':
            mode = rng.choice(('drop', 'prefix', 'torn'))
        if mode == 'drop':
            s['writes_dropped'] += nwrites
            return node.durable
        if mode == 'prefix':
            img, k = bytearray(node.durable), rng.randint(0, len(ops))
            for o in ops[:k]:
                apply_op(img, o)
            done, torn = sum(1 for o in ops[:k] if o[0] == 'write'), 0
            if k < len(ops) and ops[k][0] == 'write':   # the write in flight: j sectors of it
                _, off, data = ops[k]
                first = off // SECTOR
                j = rng.randint(0, (off + len(data) - 1) // SECTOR - first + 1)
                end = min(off + len(data), (first + j) * SECTOR)
                if j:
                    apply_op(img, ('write', off, data[:end - off]))
                    done, torn = (done + 1, 0) if end == off + len(data) else (done, 1)
            s['writes_kept'] += done
            s['torn_writes'] += torn
            s['writes_dropped'] += nwrites - done - torn
            return bytes(img)
        # torn: page by page between old (durable) and new (cur)
        old, new = node.durable, bytes(node.cur)
        size = max(len(old), len(new))
        npages = (size + PAGE - 1) // PAGE
        pages = set()
        for o in ops:
            if o[0] == 'write':
                pages.update(range(o[1] // PAGE, (o[1] + len(o[2]) - 1) // PAGE + 1))
            else:                                # a truncate changes all past it
                pages.update(range(o[1] // PAGE, npages))
        if len(old) != len(new):
            pages.update(range(min(len(old), len(new)) // PAGE, npages))
        o_pad, img = old + bytes(size - len(old)), bytearray(new + bytes(size - len(new)))
        for p in sorted(x for x in pages if x < npages):
            a, b = p * PAGE, min(size, (p + 1) * PAGE)
            c = rng.randrange(3)
            s[('pages_old', 'pages_new', 'pages_torn')[c]] += 1
            if c == 0:
                img[a:b] = o_pad[a:b]
            elif c == 2:
                for x in range(a, b, SECTOR):
                    if rng.random() < 0.5:
                        img[x:min(b, x + SECTOR)] = o_pad[x:min(b, x + SECTOR)]
        if len(old) != len(new):
            del img[rng.choice((len(old), len(new))):]
        return bytes(img)

    def write_backing(self, dns, dattr, images):
        for e in os.scandir(self.backing):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
        root, written = os.geteuid() == 0, {}   # written: ino -> first path, for hard links

        def emit(dino, dpath):
            for name, ino in sorted(dns[dino].items()):
                path = os.path.join(dpath, name)
                if ino in written:
                    os.link(written[ino], path)
                    continue
                mode, uid, gid = dattr[ino]
                if stat.S_ISDIR(mode):
                    os.mkdir(path, 0o700)
                    emit(ino, path)
                elif stat.S_ISLNK(mode):
                    os.symlink(self.nodes[ino].target, path)
                else:
                    with open(path, 'wb') as f:
                        f.write(images[ino])
                    written[ino] = path
                if root:
                    os.lchown(path, uid, gid)
                if not stat.S_ISLNK(mode):
                    os.chmod(path, stat.S_IMODE(mode))
        emit(self.root.ino, self.backing)
        mode, uid, gid = dattr[self.root.ino]
        if root:
            os.chown(self.backing, uid, gid)
        os.chmod(self.backing, stat.S_IMODE(mode))


def make_fuse_class(mfusepy):
    class CutFUSE(mfusepy.FUSE):
        """mfusepy 3.1 drops the file handle of truncate/chmod/chown/utimens
        (with nullpath_ok the path is NULL for open files, e.g. ftruncate of an
        unlinked file) and the flags of rename; pass them on. utimens also
        gets UTIME_NOW/UTIME_OMIT right."""
        def _p(self, path):
            return None if path is None else path.decode(self.encoding, self.errors)

        def truncate_fuse_3(self, path, length, fip):
            return self.operations.truncate(self._p(path), length, fip.contents.fh if fip else None)

        def chmod_fuse_3(self, path, mode, fip):
            return self.operations.chmod(self._p(path), mode, fip.contents.fh if fip else None)

        def chown_fuse_3(self, path, uid, gid, fip):
            uid, gid = (-1 if x == 0xFFFFFFFF else x for x in (uid, gid))
            return self.operations.chown(self._p(path), uid, gid, fip.contents.fh if fip else None)

        def rename_fuse_3(self, old, new, flags):
            return self.operations.rename(self._p(old), self._p(new), flags)

        def utimens_fuse_3(self, path, buf, fip):
            def one(ts):
                return {UTIME_NOW: 'now', UTIME_OMIT: None}.get(ts.tv_nsec, ts.tv_sec * 10**9 + ts.tv_nsec)
            times = (one(buf.contents.actime), one(buf.contents.modtime)) if buf else None
            return self.operations.utimens(self._p(path), times, fip.contents.fh if fip else None)
    return CutFUSE


def unmount_and_exit(mountpoint):
    """Lazy unmount without touching the (maybe frozen) mount, then leave now.
    `umount -c` does not canonicalize the path: a stat would block forever."""
    EXITING.set()
    for cmd in (['umount', '-l', '-c', mountpoint], ['fusermount3', '-u', '-z', mountpoint]):
        try:
            if subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10).returncode == 0:
                break
        except (OSError, subprocess.SubprocessError):
            pass
    sys.stdout.flush()
    os._exit(0)


def main():
    args = [a for a in sys.argv[1:] if a != '--ext4']
    if len(args) != 2 or any(a.startswith('-') for a in args):
        print('usage: cutfs.py BACKING MOUNTPOINT [--ext4]', file=sys.stderr)
        sys.exit(2)
    backing, mountpoint = (os.path.abspath(a) for a in args)
    if 'FUSE_LIBRARY_PATH' not in os.environ:   # mfusepy tries libfuse2 first: prefer 3
        lib = ctypes.util.find_library('fuse3')
        if lib:
            os.environ['FUSE_LIBRARY_PATH'] = lib
    try:
        import mfusepy
    except ImportError as e:
        print(f'cutfs: mfusepy not installed ({e})', file=sys.stderr)
        sys.exit(3)
    except OSError as e:
        print(f'cutfs: mfusepy cannot load libfuse: {e}', file=sys.stderr)
        sys.exit(3)
    if mfusepy.fuse_version_major != 3:
        print(f'cutfs: need libfuse3, mfusepy found {mfusepy.fuse_version_major}', file=sys.stderr)
        sys.exit(3)
    try:
        fs = CutFS(backing, '--ext4' in sys.argv[1:], mfusepy.fuse_get_context)
    except OSError as e:
        print(f'cutfs: cannot load BACKING: {e}', file=sys.stderr)
        sys.exit(1)

    state = {'cutting': False, 'exit': False, 'cut': False}

    def on_signal(signum, frame):                # runs in the main thread
        if state['cutting']:
            state['exit'] = True                 # finish rewriting BACKING first
        else:
            unmount_and_exit(mountpoint)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)            # so libfuse leaves these alone

    done, failure = threading.Event(), []

    def serve():                                 # FUSE runs in a thread: main keeps signals
        try:
            opts = dict(foreground=True, fsname='cutfs', attr_timeout=0, entry_timeout=0,
                        negative_timeout=0, use_ino=True, hard_remove=True,
                        max_threads=1000, max_idle_threads=100)
            if os.geteuid() == 0:
                opts['allow_other'] = True
            make_fuse_class(mfusepy)(fs, mountpoint, **opts)
        except BaseException as e:               # noqa: B036 - reported by main
            failure.append(e)
        finally:
            done.set()
            if fs.ready.is_set() and not EXITING.is_set() and not state['cutting']:
                print('cutfs: the FUSE loop ended (unmounted from outside?)', file=sys.stderr)
                os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=serve, name='fuse', daemon=True).start()

    while not fs.ready.wait(0.05):
        if done.is_set():
            why = failure[0] if failure else 'the FUSE loop ended'
            if isinstance(why, RuntimeError):
                why = f'fuse_main failed with status {why} (libfuse said why above)'
            print(f'cutfs: cannot mount: {why}', file=sys.stderr)
            os._exit(1)
    os.stat(mountpoint)                          # answered by us: the mount is live
    print('ready', flush=True)

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == 'exit':
            break
        if words[0] == 'stats':
            print('stats ' + ' '.join(f'{k}={v}' for k, v in fs.stats.items()), flush=True)
        elif words[0] != 'cut':
            print(f'error unknown command {words[0]}', flush=True)
        elif len(words) not in (3, 4) or words[1] not in MODES or not words[2].lstrip('-').isdigit():
            print('cut error usage: cut drop|prefix|torn|mixed SEED [TEAR]', flush=True)
        elif state['cut']:
            print('cut error already cut', flush=True)
        else:
            state['cutting'] = state['cut'] = True
            try:
                tear = words[3] if len(words) == 4 else None
                print('cut ok ' + fs.cut(words[1], int(words[2]), tear), flush=True)
            except Exception as e:               # noqa: BLE001 - the caller must hear back
                print(f'cut error {type(e).__name__}: {e}', flush=True)
            state['cutting'] = False
            if state['exit']:
                break
    unmount_and_exit(mountpoint)


if __name__ == '__main__':
    main()
