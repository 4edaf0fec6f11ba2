//! A state dict as `torch.save(model.state_dict(), f)` writes it (PyTorch ≥ 1.6's zip archive:
//! `<name>/data.pkl`, a pickle of an `OrderedDict` of tensors, and `<name>/data/<key>`, each
//! storage's raw bytes), read without Python and without libtorch's unpickler.
//!
//! Why a reader of our own rather than `torch::pickle_load` through a C++ shim: a `.pth` file
//! is a pickle, a program; this reader runs only the opcodes and the four callables a state
//! dict of tensors needs (`OrderedDict`, `_rebuild_tensor_v2`, `_rebuild_parameter` and the
//! storage types), so a hostile or foreign file is refused in one line naming what it holds,
//! never run, and every bound (storage sizes, strides, offsets) is checked before a tensor is
//! made. It needs no build step, and it reads exactly what torchvision publishes.
use crate::user_error;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

/// The largest `data.pkl` read (a state dict's pickle is a few hundred KiB).
const PICKLE_LIMIT: u64 = 64 << 20;

/// The tensors of a `.pth` state dict, by key, in the file's order. A file that is not one is
/// a user error naming the file and what is wrong.
pub fn read(path: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    crate::files::regular_len(path)?;
    let file = std::fs::File::open(path).map_err(|e| user_error!("{}: cannot read: {e}", path.display()))?;
    read_archive(file).map_err(|msg| user_error!("{}: {msg}", path.display()))
}

fn read_archive(file: std::fs::File) -> Result<Vec<(String, Tensor)>, String> {
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        format!(
            "not a torch.save zip archive ({e}); files from PyTorch before 1.6 are re-saved with \
             torch.save(torch.load(f), f, _use_new_zipfile_serialization=True)"
        )
    })?;
    let pickle_name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .map(str::to_string)
        .ok_or("a zip archive without data.pkl (not written by torch.save)")?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    if let Ok(mut order) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        let _ = order.read_to_string(&mut s);
        if s.trim() != "little" {
            return Err(format!("written on a {} -endian machine; only little-endian files are read", s.trim()));
        }
    }
    let pickle = {
        let entry = zip.by_name(&pickle_name).map_err(|e| format!("{pickle_name}: {e}"))?;
        if entry.size() > PICKLE_LIMIT {
            return Err(format!("{pickle_name} is {} bytes, too large for a state dict", entry.size()));
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.take(PICKLE_LIMIT).read_to_end(&mut bytes).map_err(|e| format!("{pickle_name}: {e}"))?;
        bytes
    };
    let root = Unpickler::new(&pickle).run()?;
    let Value::Dict(items) = root else {
        return Err(format!("holds a pickled {}, not a state dict (an OrderedDict of tensors)", root.describe()));
    };
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (key, value) in items {
        let Value::Str(key) = key else {
            return Err(format!("a state dict key is a {}, not a string", key.describe()));
        };
        let Value::Tensor(t) = value else {
            return Err(format!("'{key}' is a {}, not a tensor", value.describe()));
        };
        if !storages.contains_key(&t.storage.key) {
            let bytes = storage_bytes(&mut zip, &prefix, &t.storage)?;
            storages.insert(t.storage.key.clone(), bytes);
        }
        let storage = &storages[&t.storage.key];
        out.push((key.clone(), t.view_of(storage).map_err(|e| format!("'{key}': {e}"))?));
    }
    Ok(out)
}

/// One storage's elements, checked against the size the pickle gives it.
fn storage_bytes(zip: &mut zip::ZipArchive<std::fs::File>, prefix: &str, s: &StorageRef) -> Result<Tensor, String> {
    let name = format!("{prefix}data/{}", s.key);
    let entry = zip.by_name(&name).map_err(|_| format!("storage {name} is missing from the archive"))?;
    let want = s.numel.checked_mul(s.kind.elt_size_in_bytes() as u64).ok_or("a storage size overflows")?;
    if entry.size() != want {
        return Err(format!(
            "storage {name} holds {} bytes, the pickle says {want} (truncated or corrupt)",
            entry.size()
        ));
    }
    let mut bytes = Vec::with_capacity(want as usize);
    entry.take(want).read_to_end(&mut bytes).map_err(|e| format!("{name}: {e} (corrupt archive)"))?;
    if bytes.len() as u64 != want {
        return Err(format!("storage {name} ends after {} of {want} bytes (truncated)", bytes.len()));
    }
    Ok(Tensor::from_data_size(&bytes, &[s.numel as i64], s.kind))
}

#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    kind: Kind,
    numel: u64,
}

#[derive(Debug, Clone)]
struct TensorRef {
    storage: StorageRef,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl TensorRef {
    /// A contiguous copy of the elements the tensor sees in `storage`, after checking that
    /// every one of them lies inside it.
    fn view_of(&self, storage: &Tensor) -> Result<Tensor, String> {
        if self.size.len() != self.stride.len()
            || self.size.iter().chain(&self.stride).any(|&v| v < 0)
            || self.offset < 0
        {
            return Err(format!("bad shape {:?} / strides {:?} / offset {}", self.size, self.stride, self.offset));
        }
        if self.size.contains(&0) {
            return Ok(Tensor::zeros(self.size.as_slice(), (self.storage.kind, tch::Device::Cpu)));
        }
        let last = self
            .size
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |acc, (&n, &s)| (n - 1).checked_mul(s).and_then(|d| acc.checked_add(d)));
        match last {
            Some(last) if (last as u64) < self.storage.numel => {}
            _ => {
                return Err(format!(
                    "shape {:?} reaches past its storage of {} elements",
                    self.size, self.storage.numel
                ))
            }
        }
        Ok(storage.as_strided(self.size.as_slice(), self.stride.as_slice(), Some(self.offset)).contiguous())
    }
}

/// What the pickle builds: the few types a state dict is made of.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float,
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String),
    Storage(StorageRef),
    Tensor(TensorRef),
    Mark,
}

impl Value {
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float => "float".into(),
            Value::Str(_) => "string".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Global(g) => format!("'{g}'"),
            Value::Storage(_) => "storage".into(),
            Value::Tensor(_) => "tensor".into(),
            Value::Mark => "mark".into(),
        }
    }

    fn int(&self) -> Result<i64, String> {
        match self {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            v => Err(format!("expected an int, found a {}", v.describe())),
        }
    }

    fn ints(&self) -> Result<Vec<i64>, String> {
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().map(Value::int).collect(),
            v => Err(format!("expected a tuple of ints, found a {}", v.describe())),
        }
    }
}

/// The storage types torch.save names, and their element kinds.
fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "torch.FloatStorage" => Kind::Float,
        "torch.DoubleStorage" => Kind::Double,
        "torch.HalfStorage" => Kind::Half,
        "torch.BFloat16Storage" => Kind::BFloat16,
        "torch.LongStorage" => Kind::Int64,
        "torch.IntStorage" => Kind::Int,
        "torch.ShortStorage" => Kind::Int16,
        "torch.CharStorage" => Kind::Int8,
        "torch.ByteStorage" => Kind::Uint8,
        "torch.BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// The callables a state dict's pickle may name; any other is refused.
const GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
];

struct Unpickler<'a> {
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0, stack: Vec::new(), memo: HashMap::new() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("data.pkl is truncated")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.at..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("data.pkl is truncated")?;
        self.at += end + 1;
        String::from_utf8(rest[..end].to_vec()).map_err(|_| "data.pkl: a name is not UTF-8".to_string())
    }

    fn string(&mut self, n: usize) -> Result<Value, String> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map(Value::Str).map_err(|_| "data.pkl: a string is not UTF-8".to_string())
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| "data.pkl is corrupt (stack underflow)".to_string())
    }

    /// The values above the topmost mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or("data.pkl is corrupt (no mark)")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top_dict(&mut self) -> Result<&mut Vec<(Value, Value)>, String> {
        match self.stack.last_mut() {
            Some(Value::Dict(d)) => Ok(d),
            _ => Err("data.pkl is corrupt (items set on something that is not a dict)".into()),
        }
    }

    fn run(mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
                    self.stack.push(Value::Int(v as i64))
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err("data.pkl holds an integer wider than 64 bits".into());
                    }
                    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 };
                    let mut le = [fill; 8];
                    le[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(le)))
                }
                b'G' => {
                    // A float's value is never needed (it could only be metadata).
                    self.take(8)?;
                    self.stack.push(Value::Float)
                }
                b'X' | b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v)
                }
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}")))
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memoize(i)?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memoize(i)?
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memoize(i)?
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.recall(i)?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.recall(i)?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("data.pkl is corrupt (stack underflow)".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.stack.last_mut() {
                        Some(Value::List(l)) => l.push(v),
                        _ => return Err("data.pkl is corrupt (append to something that is not a list)".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.stack.last_mut() {
                        Some(Value::List(l)) => l.extend(items),
                        _ => return Err("data.pkl is corrupt (append to something that is not a list)".into()),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.top_dict()?.push((k, v))
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("data.pkl is corrupt (an odd number of dict items)".into());
                    }
                    let mut it = items.into_iter();
                    let dict = self.top_dict()?;
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        dict.push((k, v));
                    }
                }
                b'b' => {
                    // An OrderedDict's state (`_metadata`, the modules' versions): not needed.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = persistent_storage(pid)?;
                    self.stack.push(Value::Storage(storage))
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.stack.push(v)
                }
                b'.' => return self.pop(),
                other => {
                    return Err(format!(
                        "data.pkl uses pickle opcode 0x{other:02x} at byte {}, which no state dict of tensors \
                         needs (not a torch.save'd state dict?)",
                        self.at - 1
                    ))
                }
            }
        }
    }

    fn memoize(&mut self, i: u32) -> Result<(), String> {
        let top = self.stack.last().ok_or("data.pkl is corrupt (memoize on an empty stack)")?.clone();
        self.memo.insert(i, top);
        Ok(())
    }

    fn recall(&mut self, i: u32) -> Result<(), String> {
        let v = self.memo.get(&i).cloned().ok_or_else(|| format!("data.pkl is corrupt (memo {i} unset)"))?;
        self.stack.push(v);
        Ok(())
    }
}

/// `('storage', <storage type>, key, location, numel)`: a storage in `data/<key>`.
fn persistent_storage(pid: Value) -> Result<StorageRef, String> {
    let Value::Tuple(items) = pid else { return Err("data.pkl: a persistent id is not a tuple".into()) };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(ty), Value::Str(key), _location, numel] if tag == "storage" => {
            let kind = storage_kind(ty).ok_or_else(|| format!("data.pkl: unsupported storage type '{ty}'"))?;
            if key.is_empty() || key.contains(['/', '\\']) || key.contains("..") {
                return Err(format!("data.pkl: bad storage key '{key}'"));
            }
            let numel = u64::try_from(numel.int()?).map_err(|_| "data.pkl: a negative storage size".to_string())?;
            Ok(StorageRef { key: key.clone(), kind, numel })
        }
        _ => Err("data.pkl: a persistent id is not a torch storage".into()),
    }
}

/// Calls one of [`GLOBALS`] on `args`.
fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(name) = callable else {
        return Err(format!("data.pkl calls a {}, which no state dict needs", callable.describe()));
    };
    if !GLOBALS.contains(&name.as_str()) {
        return Err(format!("data.pkl calls '{name}', which no state dict of tensors needs (refused, not run)"));
    }
    let Value::Tuple(args) = args else { return Err(format!("data.pkl: '{name}' gets a non-tuple argument")) };
    match name.as_str() {
        "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
        "torch._utils._rebuild_tensor_v2" => match args.as_slice() {
            [Value::Storage(storage), offset, size, stride, ..] => Ok(Value::Tensor(TensorRef {
                storage: storage.clone(),
                offset: offset.int()?,
                size: size.ints()?,
                stride: stride.ints()?,
            })),
            _ => Err("data.pkl: _rebuild_tensor_v2 without a storage".into()),
        },
        // A saved nn.Parameter: its data.
        _ => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err(format!("data.pkl: '{name}' without a tensor")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-written pickle: `OrderedDict([('w', <2×3 float tensor>)])` with its storage.
    fn pickle_of_one_tensor(global: &str) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(format!("c{global}\n").as_bytes());
        p.extend([b')', b'R', b'(']);
        p.extend([b'X', 1, 0, 0, 0, b'w']);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
        p.extend(b"K\x00K\x02K\x03\x86K\x03K\x01\x86\x89)tR");
        p.extend(b"u.");
        p
    }

    #[test]
    fn a_state_dict_pickle_gives_its_tensor_refs() {
        let root = Unpickler::new(&pickle_of_one_tensor("collections\nOrderedDict")).run().unwrap();
        let Value::Dict(items) = root else { panic!("{root:?}") };
        let Value::Tensor(t) = &items[0].1 else { panic!() };
        assert_eq!((t.size.as_slice(), t.stride.as_slice(), t.storage.numel), (&[2, 3][..], &[3, 1][..], 6));
        let storage = Tensor::arange(6, (Kind::Float, tch::Device::Cpu));
        assert_eq!(t.view_of(&storage).unwrap().sum(Kind::Float).double_value(&[]), 15.0);
        let past = TensorRef { offset: 1, ..t.clone() };
        assert!(past.view_of(&storage).unwrap_err().contains("past its storage"));
    }

    #[test]
    fn other_callables_are_refused_not_run() {
        let e = Unpickler::new(&pickle_of_one_tensor("os\nsystem")).run().unwrap_err();
        assert!(e.contains("'os.system'") && e.contains("refused"), "{e}");
    }
}
