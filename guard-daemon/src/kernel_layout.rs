//! What the programs need to know about the running kernel, read from its
//! BTF: byte offsets of the struct members they read
//! (`guard_common::KERNEL_FIELDS`) and the argument counts of the LSM hooks.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, BtfType, Type};
use guard_common::{KernelField, LsmHook};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Where the kernel lists its symbols' addresses.
pub const KALLSYMS: &str = "/proc/kallsyms";

/// The addresses of the kernel's symbols `names`; 0 for one the kernel
/// does not give (no such symbol, or addresses hidden by `kptr_restrict`).
pub fn symbols<const N: usize>(names: [&str; N]) -> [u64; N] {
    let text = std::fs::read_to_string(KALLSYMS).unwrap_or_default();
    symbols_in(&text, names)
}

/// [`symbols`] of a `/proc/kallsyms` text: `address type name` lines, with
/// `[module]` after a module's symbols (never the ones wanted here).
fn symbols_in<const N: usize>(text: &str, names: [&str; N]) -> [u64; N] {
    let mut found = [0; N];
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(address), Some(_), Some(symbol), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if let Some(at) = names.iter().position(|name| *name == symbol) {
            found[at] = u64::from_str_radix(address, 16).unwrap_or(0);
        }
    }
    found
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "cannot read kernel BTF at {path}: {source}. Guard needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    Btf {
        path: PathBuf,
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no struct `{structure}` (needed for `{structure}.{member}`)")]
    NoStruct { structure: String, member: String },
    #[error("kernel BTF: struct `{structure}` has no member `{member}`")]
    NoMember { structure: String, member: String },
    #[error("kernel BTF: `{structure}.{member}` is a bitfield; the programs cannot read it")]
    Bitfield { structure: String, member: String },
    #[error("kernel BTF: {0}")]
    Malformed(btf_rs::Error),
    #[error(
        "this kernel has no BPF LSM hook `{hook}` (no `bpf_lsm_{hook}` in its BTF); Guard supports Linux 6.1 and later"
    )]
    NoHook { hook: &'static str },
    #[error(
        "LSM hook `{hook}` takes {found} arguments on this kernel, the programs were written for {expected}; this kernel is not supported"
    )]
    HookArgs {
        hook: &'static str,
        expected: usize,
        found: usize,
    },
}

/// The running kernel's layout: one offset per kernel field, in
/// `KERNEL_FIELDS` order.
pub struct KernelLayout {
    btf: Btf,
}

impl KernelLayout {
    pub fn from_sys() -> Result<Self, LayoutError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, LayoutError> {
        let btf = Btf::from_file(path).map_err(|source| LayoutError::Btf {
            path: path.into(),
            source,
        })?;
        Ok(Self { btf })
    }

    /// Byte offset of `field` in this kernel: of the first of its `|`-separated
    /// member paths this kernel has (members get renamed between kernels).
    pub fn offset(&self, field: &KernelField) -> Result<u32, LayoutError> {
        let mut error = None;
        for member in field.member.split('|') {
            match self.member_offset(field.structure, member) {
                Ok(offset) => return Ok(offset),
                Err(e @ LayoutError::NoMember { .. }) => error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(error.unwrap_or_else(|| LayoutError::NoMember {
            structure: field.structure.into(),
            member: field.member.into(),
        }))
    }

    fn member_offset(&self, structure: &str, member: &str) -> Result<u32, LayoutError> {
        let no_member = || LayoutError::NoMember {
            structure: structure.into(),
            member: member.into(),
        };
        let mut current = self
            .find_struct(structure)
            .ok_or_else(|| LayoutError::NoStruct {
                structure: structure.into(),
                member: member.into(),
            })?;
        let mut bits = 0u32;
        let mut components = member.split('.').peekable();
        while let Some(name) = components.next() {
            let (member_bits, member_type) =
                self.find_member(&current, name)?.ok_or_else(no_member)?;
            bits += member_bits;
            if components.peek().is_some() {
                current = self.resolve_struct(member_type)?.ok_or_else(no_member)?;
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(LayoutError::Bitfield {
                structure: structure.into(),
                member: member.into(),
            });
        }
        Ok(bits / 8)
    }

    /// Checks that the kernel has `hook` with the argument count the program expects.
    pub fn check_hook(&self, hook: &LsmHook) -> Result<(), LayoutError> {
        let name = format!("bpf_lsm_{}", hook.name);
        let types = self
            .btf
            .resolve_types_by_name(&name)
            .map_err(|_| LayoutError::NoHook { hook: hook.name })?;
        let func = types
            .iter()
            .find_map(|t| match t {
                Type::Func(func) => Some(func.clone()),
                _ => None,
            })
            .ok_or(LayoutError::NoHook { hook: hook.name })?;
        let found = match self
            .btf
            .resolve_chained_type(&func)
            .map_err(LayoutError::Malformed)?
        {
            Type::FuncProto(proto) => proto.parameters.len(),
            _ => return Err(LayoutError::NoHook { hook: hook.name }),
        };
        let fits = if hook.leading_args {
            found >= hook.args
        } else {
            found == hook.args
        };
        if !fits {
            return Err(LayoutError::HookArgs {
                hook: hook.name,
                expected: hook.args,
                found,
            });
        }
        Ok(())
    }

    fn find_struct(&self, name: &str) -> Option<btf_rs::Struct> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        types.into_iter().find_map(|t| match t {
            // Forward declarations have no members; skip empty ones.
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
    }

    /// Finds `name` among the members of `st`, descending into anonymous
    /// struct and union members. Returns its bit offset and type id.
    fn find_member(
        &self,
        st: &btf_rs::Struct,
        name: &str,
    ) -> Result<Option<(u32, u32)>, LayoutError> {
        for member in &st.members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let Some(type_id) = member.get_type_id() else {
                continue;
            };
            if member_name == name {
                return Ok(Some((member.bit_offset(), type_id)));
            }
            if member_name.is_empty()
                && let Some(inner) = self.resolve_struct(type_id)?
                && let Some((bits, ty)) = self.find_member(&inner, name)?
            {
                return Ok(Some((member.bit_offset() + bits, ty)));
            }
        }
        Ok(None)
    }

    /// The struct or union behind `type_id`, through typedefs and qualifiers.
    fn resolve_struct(&self, type_id: u32) -> Result<Option<btf_rs::Struct>, LayoutError> {
        let mut ty = self
            .btf
            .resolve_type_by_id(type_id)
            .map_err(LayoutError::Malformed)?;
        loop {
            match ty {
                Type::Struct(s) | Type::Union(s) => return Ok(Some(s)),
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let next = ty.as_btf_type().expect("qualifier has a type");
                    ty = self
                        .btf
                        .resolve_chained_type(next)
                        .map_err(LayoutError::Malformed)?;
                }
                _ => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_found_by_exact_name_outside_modules() {
        let text = "ffffffff82a0b040 D rename_lock\n\
                    ffffffff82a0b080 d mount_lock_key\n\
                    ffffffffc0a01000 d mount_lock\t[some_module]\n\
                    ffffffff82c0f100 d mount_lock\n";
        assert_eq!(
            symbols_in(text, ["rename_lock", "mount_lock", "absent"]),
            [0xffff_ffff_82a0_b040, 0xffff_ffff_82c0_f100, 0]
        );
        // Hidden by kptr_restrict: every address reads as zero.
        let hidden = "0000000000000000 D rename_lock\n";
        assert_eq!(symbols_in(hidden, ["rename_lock"]), [0]);
    }

    /// Every field resolves on the kernel running the tests (the kernel
    /// tests cover 6.1 and 6.12), through one of its alternatives.
    #[test]
    fn every_field_resolves_on_this_kernel() {
        let Ok(layout) = KernelLayout::from_sys() else {
            return; // No kernel BTF here.
        };
        for field in guard_common::KERNEL_FIELDS {
            layout
                .offset(field)
                .unwrap_or_else(|e| panic!("{}: {e}", field.global));
        }
    }

    #[test]
    fn a_field_with_no_known_name_is_an_error() {
        let Ok(layout) = KernelLayout::from_sys() else {
            return;
        };
        let field = KernelField {
            global: "X",
            structure: "inode",
            member: "no_such_member|nor_this",
        };
        assert!(matches!(
            layout.offset(&field),
            Err(LayoutError::NoMember { .. })
        ));
    }
}
