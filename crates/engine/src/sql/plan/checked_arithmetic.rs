//! Checked integer arithmetic for writes. DataFusion's `+`, `-` and `*` wrap on integer overflow
//! (`9223372036854775807 + 1` is `-9223372036854775808`); a database must refuse such a value, as
//! PostgreSQL does (`bigint out of range`). The DML rewrite replaces every integer `+ - *` in the
//! input of an INSERT or UPDATE with `CheckedArithmetic`, which uses Arrow's overflow-checking
//! kernels and fails with an error naming the operation and, when known, the target column.

use std::sync::Arc;

use datafusion::arrow::compute::kernels::numeric;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ExprSchema, Result, ScalarValue, exec_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// `a + b`, `a - b` or `a * b` on integers, failing on overflow.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CheckedArithmetic {
    op: Operator,
    /// The target column the result is written to, for the error message.
    column: Option<String>,
    signature: Signature,
}

impl CheckedArithmetic {
    fn new(op: Operator, column: Option<String>) -> Self {
        Self { op, column, signature: Signature::any(2, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for CheckedArithmetic {
    fn name(&self) -> &str {
        match self.op {
            Operator::Plus => "checked_add",
            Operator::Minus => "checked_sub",
            _ => "checked_mul",
        }
    }

    /// Shown (and named in schemas) as the operation it replaces, so plans and column names
    /// do not change.
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        let binary = Expr::BinaryExpr(BinaryExpr::new(Box::new(args[0].clone()), self.op, Box::new(args[1].clone())));
        Ok(binary.schema_name().to_string())
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        self.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        args.iter().any(|a| a.nullable(schema).unwrap_or(true))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [left, right] = args.args.as_slice() else {
            return exec_err!("{} takes two arguments", self.name());
        };
        let (l, r) = (left.to_array(args.number_rows)?, right.to_array(args.number_rows)?);
        let result = match self.op {
            Operator::Plus => numeric::add(&l, &r),
            Operator::Minus => numeric::sub(&l, &r),
            _ => numeric::mul(&l, &r),
        };
        let array = match result {
            Ok(a) => a,
            Err(e) => {
                let ty = crate::catalog::types::ColumnType::from_arrow(l.data_type())
                    .map_or_else(|_| l.data_type().to_string(), |t| t.sql_name());
                let target = self.column.as_deref().map(|c| format!(" for column {c}")).unwrap_or_default();
                return exec_err!("{ty} out of range{target}: {e}");
            }
        };
        let scalar_inputs = matches!(left, ColumnarValue::Scalar(_)) && matches!(right, ColumnarValue::Scalar(_));
        if scalar_inputs {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?));
        }
        Ok(ColumnarValue::Array(array))
    }
}

fn is_integer(t: &DataType) -> bool {
    t.is_integer()
}

/// Replaces every integer `+ - *` in `expr` (whose columns resolve in `schema`) with its
/// checked form; `column` names the written column when the expression produces one.
pub fn checked(expr: Expr, schema: &DFSchema, column: Option<&str>) -> Result<Expr> {
    expr.transform_up(|e| match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right })
            if matches!(op, Operator::Plus | Operator::Minus | Operator::Multiply)
                && is_integer(&left.get_type(schema)?)
                && left.get_type(schema)? == right.get_type(schema)? =>
        {
            let udf = ScalarUDF::new_from_impl(CheckedArithmetic::new(op, column.map(str::to_owned)));
            Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(udf), vec![*left, *right]))))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}
