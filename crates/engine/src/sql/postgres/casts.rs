//! Two casts done as PostgreSQL does them, in place of Arrow's (an analyzer rule after
//! DataFusion's type coercion, so explicit casts, INSERT's casts to the column types and
//! implicit ones are all covered):
//! - decimal to `float8`/`float4` is correctly rounded (the nearest double to the exact
//!   decimal, as PostgreSQL reads numeric's text with `strtod`); Arrow divides a float by a
//!   power of ten, one step off for `123456789.12345679`;
//! - text to `bytea` reads PostgreSQL's bytea input: `\x0001ff` is the three bytes 00 01 ff
//!   (hex format), backslash escapes (`\\`, `\001`) in the escape format; Arrow stores the
//!   text's own bytes.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Decimal128Array, Decimal256Array, Float32Array, Float64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::logical_expr::Operator;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    Cast, ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// The analyzer rule.
#[derive(Debug)]
pub struct PostgresCasts {
    to_double: Arc<ScalarUDF>,
    to_real: Arc<ScalarUDF>,
    bytea_in: Arc<ScalarUDF>,
}

impl Default for PostgresCasts {
    fn default() -> Self {
        let udf = |name, to, convert| Arc::new(ScalarUDF::new_from_impl(PgCast::new(name, to, convert)));
        Self {
            to_double: udf("pg_numeric_float8", DataType::Float64, |a| decimal_to_float(a, false)),
            to_real: udf("pg_numeric_float4", DataType::Float32, |a| decimal_to_float(a, true)),
            bytea_in: udf("pg_bytea_in", DataType::Binary, text_to_bytea),
        }
    }
}

impl AnalyzerRule for PostgresCasts {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let schema = merge_schema(&node.inputs());
            // Where expressions name output columns, a rewritten one keeps its name.
            let named = matches!(node, LogicalPlan::Projection(_) | LogicalPlan::Aggregate(_) | LogicalPlan::Window(_));
            node.map_expressions(|e| {
                let name = named.then(|| e.schema_name().to_string());
                let rewritten = e.transform_up(|e| self.rewrite(e, &schema))?;
                match name {
                    Some(name) if rewritten.transformed => rewritten.map_data(|e| e.alias_if_changed(name)),
                    _ => Ok(rewritten),
                }
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "topicfusion_postgres_casts"
    }
}

impl PostgresCasts {
    /// The double under DataFusion's cast of a double to a decimal (`None` for anything else).
    fn double_cast_to_decimal(e: &Expr, schema: &datafusion::common::DFSchema) -> Result<Option<Expr>> {
        let Expr::Cast(Cast { expr, field }) = e else { return Ok(None) };
        if !field.data_type().is_decimal() {
            return Ok(None);
        }
        Ok(match expr.get_type(schema)? {
            DataType::Float64 => Some((**expr).clone()),
            DataType::Float32 | DataType::Float16 => Some(Expr::Cast(Cast::new(expr.clone(), DataType::Float64))),
            _ => None,
        })
    }

    /// A decimal operand as the nearest double (a double stays itself).
    fn as_double(&self, e: Expr, schema: &datafusion::common::DFSchema) -> Result<Expr> {
        if let Some(inner) = Self::double_cast_to_decimal(&e, schema)? {
            return Ok(inner);
        }
        // The coercion's widening of a decimal (which can overflow: 24 digits to (38, 15)).
        if let Expr::Cast(Cast { expr, field }) = &e
            && field.data_type().is_decimal()
            && expr.get_type(schema)?.is_decimal()
        {
            return self.as_double((**expr).clone(), schema);
        }
        Ok(match e.get_type(schema)? {
            DataType::Decimal128(..) | DataType::Decimal256(..) => {
                Expr::ScalarFunction(ScalarFunction::new_udf(Arc::clone(&self.to_double), vec![e]))
            }
            DataType::Float64 | DataType::Null => e,
            _ => Expr::Cast(Cast::new(Box::new(e), DataType::Float64)),
        })
    }

    fn rewrite(&self, e: Expr, schema: &datafusion::common::DFSchema) -> Result<Transformed<Expr>> {
        // A comparison of a double with a decimal compares doubles, as in PostgreSQL (float8
        // wins over numeric). DataFusion compares decimals, casting the double, which fails for
        // doubles beyond the decimal's range (1e300, NaN).
        match &e {
            Expr::BinaryExpr(b)
                if matches!(
                    b.op,
                    Operator::Eq
                        | Operator::NotEq
                        | Operator::Lt
                        | Operator::LtEq
                        | Operator::Gt
                        | Operator::GtEq
                        | Operator::IsDistinctFrom
                        | Operator::IsNotDistinctFrom
                ) =>
            {
                let (l, r) = (&b.left, &b.right);
                if Self::double_cast_to_decimal(l, schema)?.is_some()
                    || Self::double_cast_to_decimal(r, schema)?.is_some()
                {
                    let left = self.as_double((**l).clone(), schema)?;
                    let right = self.as_double((**r).clone(), schema)?;
                    return Ok(Transformed::yes(Expr::BinaryExpr(datafusion::logical_expr::BinaryExpr::new(
                        Box::new(left),
                        b.op,
                        Box::new(right),
                    ))));
                }
            }
            Expr::InList(in_list) if Self::double_cast_to_decimal(&in_list.expr, schema)?.is_some() => {
                let expr = self.as_double((*in_list.expr).clone(), schema)?;
                let list = in_list.list.iter().map(|e| self.as_double(e.clone(), schema)).collect::<Result<_>>()?;
                return Ok(Transformed::yes(Expr::InList(datafusion::logical_expr::expr::InList::new(
                    Box::new(expr),
                    list,
                    in_list.negated,
                ))));
            }
            _ => {}
        }
        let Expr::Cast(Cast { expr, field }) = &e else { return Ok(Transformed::no(e)) };
        let from = expr.get_type(schema)?;
        let udf = match (&from, field.data_type()) {
            (DataType::Decimal128(..) | DataType::Decimal256(..), DataType::Float64) => &self.to_double,
            (DataType::Decimal128(..) | DataType::Decimal256(..), DataType::Float32) => &self.to_real,
            (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, DataType::Binary) => &self.bytea_in,
            _ => return Ok(Transformed::no(e)),
        };
        Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(Arc::clone(udf), vec![(**expr).clone()]))))
    }
}

/// One of the casts as a function of one argument.
#[derive(Debug)]
struct PgCast {
    name: &'static str,
    to: DataType,
    signature: Signature,
    convert: fn(&ArrayRef) -> Result<ArrayRef>,
}

// A cast is known by its name (each name has one conversion).
impl PartialEq for PgCast {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for PgCast {}

impl std::hash::Hash for PgCast {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl PgCast {
    fn new(name: &'static str, to: DataType, convert: fn(&ArrayRef) -> Result<ArrayRef>) -> Self {
        Self { name, to, signature: Signature::any(1, Volatility::Immutable), convert }
    }
}

impl ScalarUDFImpl for PgCast {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.to.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else { return exec_err!("{} takes one argument", self.name) };
        match arg {
            ColumnarValue::Array(a) => Ok(ColumnarValue::Array((self.convert)(a)?)),
            ColumnarValue::Scalar(s) => {
                let out = (self.convert)(&s.to_array()?)?;
                Ok(ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&out, 0)?))
            }
        }
    }
}

/// `unscaled * 10^-scale` as the nearest double (or float).
fn decimal_value_to_f64(unscaled: &dyn std::fmt::Display, small: Option<i128>, scale: i8, real: bool) -> f64 {
    // Both operands exact and one division: correctly rounded.
    if let Some(v) = small
        && v.unsigned_abs() < (1u128 << if real { 24 } else { 53 })
        && (0..=if real { 10 } else { 22 }).contains(&scale)
    {
        return if real { (v as f32 / 10f32.powi(scale as i32)) as f64 } else { v as f64 / 10f64.powi(scale as i32) };
    }
    let text = format!("{unscaled}e{}", -(scale as i32));
    if real { text.parse::<f32>().map(f64::from).unwrap_or(f64::NAN) } else { text.parse::<f64>().unwrap_or(f64::NAN) }
}

fn decimal_to_float(array: &ArrayRef, real: bool) -> Result<ArrayRef> {
    let values: Vec<Option<f64>> = match array.data_type() {
        DataType::Decimal128(_, scale) => {
            let a: &Decimal128Array = array.as_primitive();
            a.iter().map(|v| v.map(|v| decimal_value_to_f64(&v, Some(v), *scale, real))).collect()
        }
        DataType::Decimal256(_, scale) => {
            let a: &Decimal256Array = array.as_primitive();
            a.iter().map(|v| v.map(|v| decimal_value_to_f64(&v, v.to_i128(), *scale, real))).collect()
        }
        DataType::Null => vec![None; array.len()],
        other => return exec_err!("pg_numeric_float: not a decimal: {other}"),
    };
    Ok(if real {
        Arc::new(values.into_iter().map(|v| v.map(|v| v as f32)).collect::<Float32Array>())
    } else {
        Arc::new(values.into_iter().collect::<Float64Array>())
    })
}

fn text_to_bytea(array: &ArrayRef) -> Result<ArrayRef> {
    let text = cast(array, &DataType::Utf8)?;
    let text = text.as_string::<i32>();
    let mut out = BinaryBuilder::with_capacity(text.len(), text.value_data().len());
    for v in text.iter() {
        match v {
            None => out.append_null(),
            Some(v) => out.append_value(crate::catalog::types::bytea_in(v).map_err(DataFusionError::Execution)?),
        }
    }
    Ok(Arc::new(out.finish()))
}
