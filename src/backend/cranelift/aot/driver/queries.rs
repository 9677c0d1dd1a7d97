//! The driver's small functions: `NAME_input_len`, `NAME_output_len`, `NAME_batch`,
//! `NAME_input_shape`, `NAME_output_shape`, `NAME_last_error`, `NAME_destroy`,
//! `NAME_param_count`, `NAME_param_len` and `NAME_param_name` (0 / NULL out of range).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData};
use cranelift_module::{DataId, Module as ClifModule};

use super::env::{cstr, data, free_handle, gv, Definer, Env};
use super::{DriverSpec, Layout};
use crate::error::Result;

/// Defines every query function and `NAME_destroy`.
pub(super) fn emit_queries<M: ClifModule>(
    m: &mut M,
    def: &mut Definer,
    env: &Env,
    spec: &DriverSpec,
    layout: &Layout,
) -> Result<()> {
    let (n, p, i32t) = (spec.name, env.ptr, types::I32);
    // size_t NAME_input_len(void), NAME_output_len(void), NAME_batch(void),
    // NAME_param_count(void)
    for (suffix, value) in [
        ("input_len", spec.in_len),
        ("output_len", spec.out_len),
        ("batch", spec.batch),
        ("param_count", spec.param_lens.len()),
    ] {
        def.define(m, &format!("{n}_{suffix}"), &[], Some(p), &|_, b, _| {
            let v = b.ins().iconst(p, value as i64);
            b.ins().return_(&[v]);
            Ok(())
        })?;
    }
    // int NAME_input_shape(size_t *dims), NAME_output_shape(size_t *dims)
    for (suffix, shape) in [
        ("input_shape", spec.in_shape),
        ("output_shape", spec.out_shape),
    ] {
        def.define(m, &format!("{n}_{suffix}"), &[p], Some(i32t), &|_, b, a| {
            let (fill, done) = (b.create_block(), b.create_block());
            b.ins().brif(a[0], fill, &[], done, &[]);
            b.switch_to_block(fill);
            for (k, &d) in shape.iter().enumerate() {
                let v = b.ins().iconst(p, d as i64);
                b.ins()
                    .store(MemFlagsData::trusted(), v, a[0], (8 * k) as i32);
            }
            b.ins().jump(done, &[]);
            b.switch_to_block(done);
            let r = b.ins().iconst(i32t, shape.len() as i64);
            b.ins().return_(&[r]);
            Ok(())
        })?;
    }
    // const char *NAME_last_error(NAME_t *)
    def.define(m, &format!("{n}_last_error"), &[p], Some(p), &|m, b, _| {
        let e = gv(m, b, env, env.err);
        b.ins().return_(&[e]);
        Ok(())
    })?;
    // void NAME_destroy(NAME_t *)
    def.define(m, &format!("{n}_destroy"), &[p], None, &|m, b, a| {
        let (free, done) = (b.create_block(), b.create_block());
        b.ins().brif(a[0], free, &[], done, &[]);
        b.switch_to_block(free);
        free_handle(m, b, env, a[0], &layout.free_words);
        b.ins().jump(done, &[]);
        b.switch_to_block(done);
        b.ins().return_(&[]);
        Ok(())
    })?;
    emit_param_queries(m, def, env, spec)
}

/// `NAME_param_len(i)` (0 out of range) and `NAME_param_name(i)` (NULL out of range),
/// from tables in the object.
fn emit_param_queries<M: ClifModule>(
    m: &mut M,
    def: &mut Definer,
    env: &Env,
    spec: &DriverSpec,
) -> Result<()> {
    let (n, p) = (spec.name, env.ptr);
    let count = spec.param_lens.len();
    let mut len_table = Vec::with_capacity(8 * count.max(1));
    for &l in spec.param_lens {
        len_table.extend_from_slice(&(l as u64).to_le_bytes());
    }
    len_table.resize(len_table.len().max(8), 0);
    let lens_id = data(m, &format!("{n}__param_lens"), false, Some(len_table), 0, 8)?;
    let mut names = Vec::new();
    let mut name_offs = Vec::with_capacity(8 * count.max(1));
    for s in spec.param_names {
        name_offs.extend_from_slice(&(names.len() as u64).to_le_bytes());
        names.extend_from_slice(&cstr(&s.replace('\0', "")));
    }
    names.resize(names.len().max(1), 0);
    name_offs.resize(name_offs.len().max(8), 0);
    let names_id = data(m, &format!("{n}__param_names"), false, Some(names), 0, 1)?;
    let offs_name = format!("{n}__param_name_offs");
    let name_offs_id = data(m, &offs_name, false, Some(name_offs), 0, 8)?;
    let tables: [(&str, DataId, Option<DataId>); 2] = [
        ("param_len", lens_id, None),
        ("param_name", name_offs_id, Some(names_id)),
    ];
    for (suffix, table, add_base) in tables {
        def.define(m, &format!("{n}_{suffix}"), &[p], Some(p), &|m, b, a| {
            let (inside, outside) = (b.create_block(), b.create_block());
            let ok = b
                .ins()
                .icmp_imm_s(IntCC::UnsignedLessThan, a[0], count as i64);
            b.ins().brif(ok, inside, &[], outside, &[]);
            b.switch_to_block(outside);
            let z = b.ins().iconst(p, 0);
            b.ins().return_(&[z]);
            b.switch_to_block(inside);
            let t = gv(m, b, env, table);
            let o = b.ins().imul_imm_s(a[0], 8);
            let at = b.ins().iadd(t, o);
            let v = b.ins().load(p, MemFlagsData::trusted(), at, 0);
            let v = match add_base {
                Some(base) => {
                    let base = gv(m, b, env, base);
                    b.ins().iadd(base, v)
                }
                None => v,
            };
            b.ins().return_(&[v]);
            Ok(())
        })?;
    }
    Ok(())
}
